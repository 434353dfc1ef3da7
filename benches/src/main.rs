//! `raftkit-bench`: benchmarks a 3-node cluster for every adapter combination and writes
//! `bench-results/<date>.md` with two SVG plots. See the library docs and `benches/README.md`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use raftkit_bench::cli::Args;
use raftkit_bench::{plot, run};

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    let plan = args.plan()?;
    if let Some(commits) = plan.commits {
        for r in run::fixed_commits(&plan, plan.framework, commits)? {
            println!(
                "{:?}: {} clients, {} commits in {:.3} s ({:.0}/s); {} redirects, {} errors, term rose by {}",
                plan.framework,
                r.clients,
                r.commits,
                r.elapsed.as_secs_f64(),
                r.commits as f64 / r.elapsed.as_secs_f64().max(1e-9),
                r.redirects,
                r.errors,
                r.term_increase
            );
            if let Some(e) = &r.last_error {
                println!("  last error: {e}");
            }
        }
        return Ok(());
    }
    // Arguments with spaces (a `--note`) quoted, so the line can be run again as shown.
    let command_line = std::iter::once("raftkit-bench".to_string())
        .chain(std::env::args().skip(1).map(|a| {
            if a.contains(char::is_whitespace) {
                format!("\"{}\"", a.replace('"', "\\\""))
            } else {
                a
            }
        }))
        .collect::<Vec<_>>()
        .join(" ");
    for c in &plan.skipped {
        eprintln!("{c}: skipped (build with --features rocksdb)");
    }
    let results = run::run(&plan, command_line)?;

    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("creating {}", plan.out.display()))?;
    let stem = results.stem();
    let md = plan.out.join(format!("{stem}.md"));
    std::fs::write(&md, results.markdown()).with_context(|| format!("writing {}", md.display()))?;
    let plots = plot::write(&results, &plan.out, &stem)?;

    println!("\nTargets:");
    for t in results.targets() {
        println!("  [{}] {}: {}", t.verdict.label().trim_matches('*'), t.what, t.figure);
    }
    println!("\nWrote {}", md.display());
    for p in plots {
        println!("Wrote {}", p.display());
    }
    println!("Took {:.0} s.", results.wall.as_secs_f64());
    let mut failed = Vec::new();
    for (part, violations) in [
        ("membership", results.membership_violations()),
        ("transfer", results.transfer_violations()),
    ] {
        if !violations.is_empty() {
            failed.push(format!("the {part} part failed:\n  {}", violations.join("\n  ")));
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{} (report written to {})", failed.join("\n"), md.display());
    }
    Ok(())
}
