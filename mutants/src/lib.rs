//! Nothing but the mutant tests (`tests/mutants.rs`): a crate outside the main workspace, so the
//! core's `mutants` feature is compiled only here.
