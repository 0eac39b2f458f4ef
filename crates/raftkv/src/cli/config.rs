//! `raftkv agent --config FILE`: settings from a TOML file, below the
//! command line and the `RAFTKV_*` environment variables. The file's keys
//! are the agent's long flags, with `_` or `-`:
//!
//! ```toml
//! id = 1
//! http_addr = "127.0.0.1:8001"
//! raft_addr = "127.0.0.1:9001"
//! data_dir = "data/1"
//! join = ["127.0.0.1:9002", "127.0.0.1:9003"]
//! heartbeat_ms = 100
//! ```
//!
//! The file is turned into flags placed before the command line's (each
//! key not given on the command line or in the environment), so every
//! value is parsed and checked exactly as a flag is; a key that names no
//! flag is refused, naming the file and the key.

use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, Command};

/// `argv` with the `--config` file's settings added as flags, if the
/// command is `agent` and a file is named (`--config`, or `RAFTKV_CONFIG`).
pub fn expand(argv: Vec<OsString>, command: &Command) -> Result<Vec<OsString>, String> {
    let Some(at) = argv.iter().position(|arg| arg == "agent") else { return Ok(argv) };
    let Some(agent) = command.find_subcommand("agent") else { return Ok(argv) };
    let given: Vec<String> = argv[at + 1..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let named = given.iter().enumerate().find_map(|(i, arg)| match arg.strip_prefix("--config") {
        Some("") => given.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_string),
        None => None,
    });
    let Some(path) = named.or_else(|| std::env::var("RAFTKV_CONFIG").ok()) else { return Ok(argv) };
    let flags = flags_from_file(Path::new(&path), agent, &given)?;
    let mut expanded = argv[..=at].to_vec();
    expanded.extend(flags.into_iter().map(OsString::from));
    expanded.extend(argv[at + 1..].iter().cloned());
    Ok(expanded)
}

/// The file's settings that neither the command line (`given`, the
/// agent's arguments) nor the environment gives: (flag name, its action,
/// value). Keys that name no setting are refused.
pub fn file_settings(
    path: &Path,
    agent: &Command,
    given: &[String],
) -> Result<Vec<(String, ArgAction, toml::Value)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e| format!("--config {}: {e}", path.display()))?;
    let mut settings = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = agent
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long.as_str()) && long != "config" && long != "print-config")
            .ok_or_else(|| format!("--config {}: `{key}` is not a setting of raftkv agent", path.display()))?;
        let flag = format!("--{long}");
        let on_command_line = given.iter().any(|g| *g == flag || g.starts_with(&format!("{flag}=")));
        let in_environment = arg.get_env().is_some_and(|name| std::env::var_os(name).is_some());
        if !on_command_line && !in_environment {
            settings.push((long, arg.get_action().clone(), value));
        }
    }
    Ok(settings)
}

fn flags_from_file(path: &Path, agent: &Command, given: &[String]) -> Result<Vec<String>, String> {
    let mut flags = Vec::new();
    for (long, action, value) in file_settings(path, agent, given)? {
        let (flag, key) = (format!("--{long}"), long.replace('-', "_"));
        let wrong = |expected: &str| format!("--config {}: `{key}` must be {expected}", path.display());
        match (&action, value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => flags.push(flag),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, _) => return Err(wrong("true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    flags.push(flag.clone());
                    flags.push(scalar(&item).ok_or_else(|| wrong("a list of strings or numbers"))?);
                }
            }
            (_, value) => {
                flags.push(flag);
                flags.push(scalar(&value).ok_or_else(|| wrong("a string, a number or true/false"))?);
            }
        }
    }
    Ok(flags)
}

/// The agent's own arguments on the command line this process was started
/// with (what follows `agent`).
pub fn given_to_agent() -> Vec<String> {
    let argv: Vec<String> = std::env::args().collect();
    match argv.iter().position(|arg| arg == "agent") {
        Some(at) => argv[at + 1..].to_vec(),
        None => Vec::new(),
    }
}

/// A TOML scalar as a flag's value.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::expand;
    use crate::cli::args::Cli;

    fn run(file: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("raftkv.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<std::ffi::OsString> = vec!["raftkv".into(), "agent".into()];
        argv.push("--config".into());
        argv.push(path.clone().into());
        argv.extend(args.iter().map(Into::into));
        let expanded = expand(argv, &Cli::command())?;
        Ok(expanded.into_iter().map(|a| a.to_string_lossy().into_owned()).skip(2).collect())
    }

    #[test]
    fn file_settings_become_flags_before_the_command_lines() {
        let file = "id = 1\nhttp-addr = \"127.0.0.1:8001\"\njoin = [\"a:1\", \"b:2\"]\nbootstrap = false\n\
                    no_metrics = true\nheartbeat_ms = 50\n";
        let flags = run(file, &["--heartbeat-ms", "70"]).unwrap();
        let text = flags.join(" ");
        assert!(text.contains("--id 1"), "{text}");
        assert!(text.contains("--http-addr 127.0.0.1:8001"), "{text}");
        assert!(text.contains("--join a:1 --join b:2"), "{text}");
        assert!(text.contains("--no-metrics"), "{text}");
        assert!(!text.contains("--bootstrap"), "{text}");
        // The command line's own value, and only it.
        assert!(!text.contains("--heartbeat-ms 50"), "{text}");
        assert!(text.ends_with("--heartbeat-ms 70"), "{text}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_by_name() {
        let error = run("idd = 1\n", &[]).unwrap_err();
        assert!(error.contains("`idd` is not a setting"), "{error}");
        let error = run("bootstrap = \"yes\"\n", &[]).unwrap_err();
        assert!(error.contains("`bootstrap` must be true or false"), "{error}");
        let error = run("id = [1, [2]]\n", &[]).unwrap_err();
        assert!(error.contains("`id` must be"), "{error}");
        let error = run("id = \n", &[]).unwrap_err();
        assert!(error.contains("raftkv.toml"), "{error}");
    }
}
