//! `kua.json`, the release manifest an app keeps at the top of its repo:
//! `{"name": "hello", "mode": "direct", "server": "bruno"}`. Its `server` says where every client
//! command run in the repo talks to (unless told otherwise); `release` also takes the app's name
//! from it when none is given.

use std::path::Path;

use serde::Deserialize;

use crate::model::AppName;

/// The manifest's file name, looked for in the current directory.
pub const MANIFEST: &str = "kua.json";

/// What `kua.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Only `direct` is known; a manifest without it means `direct`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The server the app is released on: a name in servers.json, or a URL.
    #[serde(default)]
    pub server: Option<String>,
}

impl Manifest {
    /// Parses a manifest's text; the error says what it should look like.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "{MANIFEST} is not valid: {e}; it should read {{\"name\": \"<app>\", \"mode\": \"direct\", \"server\": \
                 \"<server>\"}}"
            )
        })
    }

    /// The manifest at `path`; `None` when there is none, an error when it cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Option<Manifest>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Manifest::parse(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Refuses the modes this client cannot release with.
    pub fn check_mode(&self) -> Result<(), String> {
        match self.mode.as_deref() {
            None | Some("direct") => Ok(()),
            Some(other) => Err(format!(
                "{MANIFEST} has mode {other:?}, which this release-app does not support: only \"direct\" \
                 (talk to the server's kua-deploy admin API) is"
            )),
        }
    }

    /// The app it names, checked.
    pub fn app(&self) -> Result<AppName, String> {
        AppName::parse(&self.name).map_err(|e| format!("{MANIFEST}: \"name\": {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_manifest_names_the_app_and_its_server() {
        let m = Manifest::parse(r#"{"name": "kua-deploy", "mode": "direct", "server": "bruno"}"#).unwrap();
        assert_eq!(m.app().unwrap().as_str(), "kua-deploy");
        assert_eq!(m.server.as_deref(), Some("bruno"));
        assert!(m.check_mode().is_ok());
    }

    #[test]
    fn a_manifest_without_mode_means_direct() {
        assert!(Manifest::parse(r#"{"name": "hello"}"#).unwrap().check_mode().is_ok());
    }

    #[test]
    fn a_manifest_with_another_mode_is_a_clear_error() {
        let err = Manifest::parse(r#"{"name": "hello", "mode": "pull"}"#).unwrap().check_mode().unwrap_err();
        assert!(err.contains("\"pull\"") && err.contains("direct"), "{err}");
    }

    #[test]
    fn a_manifest_without_a_valid_name_says_what_it_should_look_like() {
        assert!(Manifest::parse(r#"{"mode": "direct"}"#).unwrap_err().contains("name"));
        assert!(Manifest::parse("not json").unwrap_err().contains("kua.json"));
        assert!(Manifest::parse(r#"{"name": "../etc"}"#).unwrap().app().unwrap_err().contains("name"));
    }

    #[test]
    fn no_manifest_file_is_not_an_error() {
        assert_eq!(Manifest::read(Path::new("/nonexistent/kua.json")).unwrap(), None);
    }
}
