//! The testkit's seeded random numbers: every random choice of a run derives from its seed, so
//! the seed replays it. The generator is the workspace's one PRNG, [`raftkit_core::Rng`].

pub use raftkit_core::Rng;
