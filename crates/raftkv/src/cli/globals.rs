//! The client options that every client command shares (given before or
//! after the command's name), as the commands read them.

use std::time::Duration;

use crate::cli::args::{ClientArgs, GlobalClientArgs, WriteOut};
use crate::cli::client::DEFAULT_ENDPOINT;

/// The client options given before or after the command's name, and where
/// `--endpoints` came from.
pub struct Globals {
    pub args: GlobalClientArgs,
    /// `--endpoints` came from `RAFTKV_ENDPOINTS`, not the command line.
    pub endpoints_from_env: bool,
}

impl Globals {
    /// The endpoints of a client command: `--endpoints` or `--addr` on the
    /// command line (not both), else `RAFTKV_ENDPOINTS`, else the default.
    pub fn endpoints(&self, client: &ClientArgs) -> Result<Vec<String>, String> {
        let given: Vec<String> =
            self.args.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        if !self.args.endpoints.is_empty() && given.is_empty() {
            return Err("--endpoints (or RAFTKV_ENDPOINTS) names no endpoint".to_string());
        }
        match (&client.addr, self.endpoints_from_env) {
            (Some(_), false) if !given.is_empty() => Err("give --addr or --endpoints, not both".to_string()),
            (Some(addr), _) => Ok(vec![addr.clone()]),
            (None, _) if !given.is_empty() => Ok(given),
            (None, _) => Ok(vec![DEFAULT_ENDPOINT.to_string()]),
        }
    }

    /// The output format: `--json` is `-w json`.
    pub fn write_out(&self, client: &ClientArgs) -> WriteOut {
        if client.json {
            WriteOut::Json
        } else {
            self.args.write_out
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.args.timeout
    }
}
