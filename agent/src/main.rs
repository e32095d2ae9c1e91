//! The `keyward` binary: parses the command line and maps the outcome to an exit code
//! scripts can rely on (see `keyward --help` and docs/configuration.md).

use std::process::ExitCode;

fn main() -> ExitCode {
    keyward_agent::cli::main()
}
