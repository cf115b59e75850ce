//! After the runs: what loadtest/smoke.sh and loadtest/run.sh make of the JSON reports.
//!
//! - `summary`   one line per report; under --strict, a report that is not clean or lost
//!   a delivery fails the command (the CI smoke run)
//! - `table`     the benchmark page (docs/benchmarks.md) and its plot (docs/benchmarks.svg)
//!   from a directory of raw reports
//! - `raw`       reading that directory: reports, runs that measured nothing, meta.txt
//! - `rows`      per scenario: which numbers, aggregated how, against which target
//! - `stats`     median / worst over runs; numbers written for people
//! - `markdown`  the page; `svg` the plot

mod markdown;
mod raw;
mod rows;
mod stats;
mod summary;
mod svg;

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{Summary, Table};

pub fn summary(args: &Summary) -> ExitCode {
    let mut failed = false;
    for path in &args.reports {
        let report = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                let line = text.lines().rev().find(|l| l.starts_with('{'));
                line.ok_or_else(|| "no JSON report in it".to_owned())
                    .and_then(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
            });
        match report {
            Ok(report) => {
                let (text, fault) = summary::line(&report);
                println!("{text}");
                if let Some(fault) = fault.filter(|_| args.strict) {
                    eprintln!("  FAIL: {fault}");
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn table(args: &Table) -> ExitCode {
    match write_table(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-loadtest table: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_table(args: &Table) -> Result<(), String> {
    let raw = raw::Raw::load(&args.raw)?;
    let page_dir = args.markdown.parent().unwrap_or(Path::new("."));
    let svg = relative(&args.svg, page_dir);
    let mut raw_link = relative(&args.raw, page_dir);
    if !raw_link.ends_with('/') {
        raw_link.push('/');
    }
    // The hand-written analysis of missed targets, when the page sits next to it.
    let analysis = page_dir
        .join(markdown::ANALYSIS)
        .exists()
        .then_some(markdown::ANALYSIS);
    let page = markdown::page(
        &raw,
        &markdown::Links {
            svg: &svg,
            raw: &raw_link,
            analysis,
        },
    );
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&args.markdown, page)?;
    write(&args.svg, svg::plot(&raw))?;
    Ok(())
}

/// `path` as a link from a page in `from`: relative when it lies below `from`, else as given.
fn relative(path: &Path, from: &Path) -> String {
    let normal = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    };
    let (path_n, from_n) = (normal(path), normal(from));
    match path_n.strip_prefix(&from_n) {
        Ok(rest) => rest.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_relative_to_the_page() {
        let docs = Path::new("docs");
        assert_eq!(
            relative(Path::new("docs/benchmarks.svg"), docs),
            "benchmarks.svg"
        );
        assert_eq!(
            relative(Path::new("./docs/benchmarks/raw"), docs),
            "benchmarks/raw"
        );
        assert_eq!(relative(Path::new("/tmp/x.svg"), docs), "/tmp/x.svg");
    }
}
