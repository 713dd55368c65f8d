//! `shoal spec`: print an AsyncAPI document (from a file, or from a service binary's
//! `--print-spec`), and `shoal spec diff OLD NEW`, the breaking-change check.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use shoal::contract::diff::{self, Allowlist, Level};
use shoal::contract::{PRINT_SPEC_ARG, to_yaml};

use crate::{CliError, CliResult};

/// Print or compare AsyncAPI documents.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "Examples:\n  \
    shoal spec --exec target/debug/my-service > asyncapi.json   # runs it with --print-spec\n  \
    shoal spec asyncapi.json --format yaml                       # checks and converts\n  \
    shoal spec diff last-release.json asyncapi.json              # exit 1 on a breaking change")]
pub(crate) struct SpecArgs {
    #[command(subcommand)]
    command: Option<SpecCommand>,
    /// A document (JSON or YAML, `-` for stdin) to check and print.
    #[arg(value_name = "FILE", required_unless_present = "exec")]
    file: Option<PathBuf>,
    /// Run this service binary with `--print-spec` and print the document it writes.
    #[arg(long, value_name = "PROGRAM", conflicts_with = "file")]
    exec: Option<PathBuf>,
    /// More arguments for PROGRAM (after `--`).
    #[arg(last = true, requires = "exec", value_name = "ARGS")]
    args: Vec<String>,
    /// How long PROGRAM may take before it is stopped.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
    /// Output format (JSON is canonical).
    #[arg(long, value_enum, default_value_t = DocFormat::Json)]
    format: DocFormat,
}

#[derive(Debug, Subcommand)]
enum SpecCommand {
    /// Compare two AsyncAPI 3.x documents, direction-aware; exit 1 on a breaking change.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The released document (JSON or YAML).
    old: PathBuf,
    /// The new document.
    new: PathBuf,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Changes accepted on purpose: lines of `RULE LOCATION` (see the README).
    #[arg(long, value_name = "FILE")]
    allowlist: Option<PathBuf>,
    /// The least serious level that fails the check (exit 1).
    #[arg(long, value_enum, default_value_t = FailOn::Breaking)]
    fail_on: FailOn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DocFormat {
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FailOn {
    /// Breaking changes fail.
    Breaking,
    /// Breaking changes and warnings fail.
    Warning,
}

pub(crate) fn run(args: SpecArgs) -> CliResult {
    if let Some(SpecCommand::Diff(diff_args)) = args.command {
        return run_diff(&diff_args);
    }
    let doc = match (&args.exec, &args.file) {
        (Some(program), _) => {
            let text = print_spec(program, &args.args, Duration::from_secs(args.timeout))?;
            diff::parse_document(&text, &format!("the output of {}", program.display()))?
        }
        (None, Some(path)) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::new(format!("could not read stdin: {e}")))?;
            diff::parse_document(&text, "stdin")?
        }
        (None, Some(path)) => diff::load_document(path)?,
        (None, None) => return Err(CliError::new("name a FILE or --exec PROGRAM")),
    };
    print!("{}", render(&doc, args.format)?);
    Ok(())
}

fn render(doc: &Value, format: DocFormat) -> CliResult<String> {
    Ok(match format {
        DocFormat::Json => {
            let mut text = serde_json::to_string_pretty(doc)
                .map_err(|e| CliError::new(format!("could not write JSON: {e}")))?;
            text.push('\n');
            text
        }
        DocFormat::Yaml => to_yaml(doc)?,
    })
}

/// Runs `program args... --print-spec` and returns what it printed.
fn print_spec(program: &Path, args: &[String], limit: Duration) -> CliResult<String> {
    let mut child = Command::new(program)
        .args(args)
        .arg(PRINT_SPEC_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::new(format!("could not run {}: {e}", program.display())))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| CliError::new("no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CliError::new(format!(
                    "{} did not exit within {limit:?}: does it handle {PRINT_SPEC_ARG} \
                     (shoal::contract::print_spec_if_asked)?",
                    program.display()
                )));
            }
            Err(e) => return Err(CliError::new(format!("waiting for the program: {e}"))),
        }
    };
    let text = reader
        .join()
        .map_err(|_| CliError::new("the output reader failed"))?
        .map_err(|e| CliError::new(format!("could not read the program's output: {e}")))?;
    if !status.success() {
        return Err(CliError::new(format!(
            "{} {PRINT_SPEC_ARG} failed ({status})",
            program.display()
        )));
    }
    Ok(text)
}

fn run_diff(args: &DiffArgs) -> CliResult {
    let old = diff::load_document(&args.old)?;
    let new = diff::load_document(&args.new)?;
    let mut report = diff::diff(&old, &new)?;
    if let Some(path) = &args.allowlist {
        report.allow(&Allowlist::load(path)?);
    }
    match args.format {
        ReportFormat::Text => say!("{}", report.to_text().trim_end()),
        ReportFormat::Json => {
            let text = serde_json::to_string_pretty(&report.to_json())
                .map_err(|e| CliError::new(format!("could not write JSON: {e}")))?;
            say!("{text}");
        }
    }
    let failing = report.count(Level::Breaking)
        + match args.fail_on {
            FailOn::Breaking => 0,
            FailOn::Warning => report.count(Level::Warning),
        };
    if failing > 0 {
        return Err(CliError::new(format!(
            "{} from {} to {}: {}",
            if args.fail_on == FailOn::Warning {
                "breaking changes or warnings"
            } else {
                "breaking changes"
            },
            args.old.display(),
            args.new.display(),
            report.summary()
        )));
    }
    Ok(())
}
