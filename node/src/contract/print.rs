//! `--print-spec`: a service binary prints its own AsyncAPI document.

use std::ffi::OsString;
use std::io::Write;

use crate::Error;
use crate::contract::service::ServiceContract;
use crate::contract::spec::to_yaml;

/// The argument [`print_spec_if_asked`] looks for.
pub const PRINT_SPEC_ARG: &str = "--print-spec";

/// Prints `contract`'s AsyncAPI document to stdout if the process was started with
/// `--print-spec` (JSON) or `--print-spec=yaml`, and says so: the caller should then exit.
/// Call it first thing in `main`, before parsing other arguments, so a service binary is its
/// own spec generator (`my-service --print-spec > asyncapi.json`, in CI too).
///
/// ```no_run
/// # fn contract() -> shoal::contract::ServiceContract { shoal::contract::ServiceContract::new("orders", "1.0.0") }
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     if shoal::contract::print_spec_if_asked(&contract())? {
///         return Ok(());
///     }
///     // ... start the service
///     # Ok(())
/// }
/// ```
pub fn print_spec_if_asked(contract: &ServiceContract) -> Result<bool, Error> {
    print_spec_from(
        std::env::args_os().skip(1),
        contract,
        &mut std::io::stdout().lock(),
    )
}

/// [`print_spec_if_asked`] on given arguments (without the program name) and output.
pub fn print_spec_from<I>(
    args: I,
    contract: &ServiceContract,
    out: &mut dyn Write,
) -> Result<bool, Error>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut format = None;
    for arg in args {
        let arg: OsString = arg.into();
        let Some(arg) = arg.to_str() else { continue };
        if arg == PRINT_SPEC_ARG {
            format = Some("json".to_owned());
        } else if let Some(value) = arg.strip_prefix("--print-spec=") {
            format = Some(value.to_ascii_lowercase());
        }
    }
    let Some(format) = format else {
        return Ok(false);
    };
    let text = match format.as_str() {
        "json" => contract.asyncapi_json()?,
        "yaml" | "yml" => to_yaml(&contract.asyncapi()?)?,
        other => {
            return Err(Error::Contract(format!(
                "--print-spec={other}: the formats are json and yaml"
            )));
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Contract(format!("could not print the document: {e}")))?;
    Ok(true)
}
