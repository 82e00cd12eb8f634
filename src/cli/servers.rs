//! Named servers, and the one place a client command decides which server it talks to.
//!
//! `servers.json` (the path in `KUA_SERVERS`, else `$XDG_CONFIG_HOME/kua-deploy/servers.json`,
//! else `~/.config/kua-deploy/servers.json`) names the kua-deploy servers a person or a CI job
//! releases to:
//!
//! ```json
//! {"default": "bruno",
//!  "servers": {"bruno": {"url": "https://deploy.bruno.example", "token_file": "bruno.token", "ca_file": "ca.pem"}}}
//! ```
//!
//! The URL is, in this order: `--url`/`KUA_DEPLOY_URL`; the server named by `--server`/
//! `KUA_SERVER`; the `server` of `./kua.json` (a name, or a URL used as it is); the file's
//! `default`; the built-in [`DEFAULT_URL`]. The token and CA file given on the command line (or
//! in the environment) win over the chosen server's `token_file` and `ca_file`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::client::{check_base_url, DEFAULT_URL};

/// What one server's entry says, its files resolved against the servers file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub url: String,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServersFile {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    servers: BTreeMap<String, ServerEntry>,
}

/// Where the servers file is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `None` when there is nowhere to look (no `KUA_SERVERS`, `XDG_CONFIG_HOME` or `HOME`).
    pub path: Option<PathBuf>,
    /// Named by `KUA_SERVERS`: then a missing file is an error, not an empty list.
    pub explicit: bool,
}

impl Location {
    /// `KUA_SERVERS`, else `$XDG_CONFIG_HOME/kua-deploy/servers.json` (an absolute
    /// `XDG_CONFIG_HOME` only, as the XDG spec says), else `$HOME/.config/kua-deploy/servers.json`.
    pub fn from_vars(
        kua_servers: Option<OsString>,
        xdg_config_home: Option<OsString>,
        home: Option<OsString>,
    ) -> Location {
        let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(path) = set(kua_servers) {
            return Location { path: Some(path), explicit: true };
        }
        let config = set(xdg_config_home).filter(|p| p.is_absolute()).or_else(|| set(home).map(|h| h.join(".config")));
        Location { path: config.map(|c| c.join("kua-deploy").join("servers.json")), explicit: false }
    }

    pub fn from_env() -> Location {
        let var = std::env::var_os;
        Location::from_vars(var("KUA_SERVERS"), var("XDG_CONFIG_HOME"), var("HOME"))
    }
}

/// The servers a client knows, and where they were read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Servers {
    /// The file (read, or looked for and absent).
    pub path: Option<PathBuf>,
    pub exists: bool,
    pub default: Option<String>,
    pub servers: BTreeMap<String, ServerEntry>,
}

impl Servers {
    /// Reads the servers file at `location`; none at the usual place is an empty list.
    pub fn load(location: &Location) -> Result<Servers, String> {
        let Some(path) = &location.path else { return Ok(Servers::default()) };
        match std::fs::read_to_string(path) {
            Ok(text) => Servers::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !location.explicit => {
                Ok(Servers { path: Some(path.clone()), ..Servers::default() })
            }
            Err(e) => Err(format!("cannot read the servers file {} (KUA_SERVERS): {e}", path.display())),
        }
    }

    /// Parses the text of the servers file at `path`: unknown keys, a `default` that names no
    /// server and a URL that is not one are refused, naming the file.
    pub fn parse(path: &Path, text: &str) -> Result<Servers, String> {
        let file: ServersFile = serde_json::from_str(text)
            .map_err(|e| format!("{}:{}:{}: {}", path.display(), e.line(), e.column(), without_position(&e)))?;
        if let Some(default) = &file.default {
            if !file.servers.contains_key(default) {
                return Err(format!(
                    "{}: \"default\" is {default:?}, which is not one of its servers ({})",
                    path.display(),
                    names(file.servers.keys())
                ));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut servers = BTreeMap::new();
        for (name, mut entry) in file.servers {
            entry.url = check_base_url(&entry.url).map_err(|e| format!("{}: server {name:?}: {e}", path.display()))?;
            entry.token_file = entry.token_file.map(|f| file_path(dir, &f));
            entry.ca_file = entry.ca_file.map(|f| file_path(dir, &f));
            servers.insert(name, entry);
        }
        Ok(Servers { path: Some(path.to_owned()), exists: true, default: file.default, servers })
    }
}

/// A path the servers file names: `~/…` is under the home directory (as a shell would read it),
/// a relative one under the file's own directory.
fn file_path(dir: &Path, f: &Path) -> PathBuf {
    match (f.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => dir.join(f),
    }
}

/// serde_json's message without the " at line L column C" it ends with (given in front instead).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).map(str::to_owned).unwrap_or(text)
}

fn names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// What the command line, the environment and `kua.json` ask for.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// `--url` or `KUA_DEPLOY_URL`.
    pub url: Option<String>,
    /// `--server` or `KUA_SERVER`.
    pub server: Option<String>,
    /// The `server` of `./kua.json`.
    pub manifest_server: Option<String>,
    /// `--ca-file` or `KUA_CA_FILE`.
    pub ca_file: Option<PathBuf>,
}

/// Where the URL came from, for what the commands print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Url,
    ServerOption(String),
    Manifest(Option<String>),
    Default(String),
    BuiltIn,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Url => write!(f, "from --url or KUA_DEPLOY_URL"),
            Origin::ServerOption(name) => write!(f, "server {name}, from --server or KUA_SERVER"),
            Origin::Manifest(Some(name)) => write!(f, "server {name}, from kua.json"),
            Origin::Manifest(None) => write!(f, "from kua.json"),
            Origin::Default(name) => write!(f, "server {name}, the default in servers.json"),
            Origin::BuiltIn => write!(f, "the built-in default"),
        }
    }
}

/// The server a client command talks to and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Checked by [`check_base_url`].
    pub url: String,
    pub origin: Origin,
    /// The chosen server's `token_file`, tried after the token options.
    pub token_file: Option<PathBuf>,
    /// `--ca-file`, else the chosen server's `ca_file`.
    pub ca_file: Option<PathBuf>,
}

/// Chooses the server (see the module doc for the order). Errors are usage errors: an unknown
/// server name (listing the known ones and the file), or a URL that is not one.
pub fn resolve(wanted: &Wanted, servers: &Servers) -> Result<Resolved, String> {
    let named = |name: &str, how: &str| -> Result<(String, Option<&ServerEntry>), String> {
        let entry = servers.servers.get(name).ok_or_else(|| unknown_server(name, how, servers))?;
        Ok((entry.url.clone(), Some(entry)))
    };
    let (url, entry, origin) = if let Some(url) = &wanted.url {
        (url.clone(), None, Origin::Url)
    } else if let Some(name) = &wanted.server {
        let (url, entry) = named(name, "given by --server or KUA_SERVER")?;
        (url, entry, Origin::ServerOption(name.clone()))
    } else if let Some(server) = &wanted.manifest_server {
        if server.contains("://") {
            (server.clone(), None, Origin::Manifest(None))
        } else {
            let (url, entry) = named(server, "named by kua.json")?;
            (url, entry, Origin::Manifest(Some(server.clone())))
        }
    } else if let Some(name) = &servers.default {
        let (url, entry) = named(name, "the default")?;
        (url, entry, Origin::Default(name.clone()))
    } else {
        (DEFAULT_URL.to_owned(), None, Origin::BuiltIn)
    };
    Ok(Resolved {
        url: check_base_url(&url)?,
        origin,
        token_file: entry.and_then(|e| e.token_file.clone()),
        ca_file: wanted.ca_file.clone().or_else(|| entry.and_then(|e| e.ca_file.clone())),
    })
}

fn unknown_server(name: &str, how: &str, servers: &Servers) -> String {
    let head = format!("unknown server {name:?} ({how})");
    match (&servers.path, servers.exists) {
        (Some(path), true) => {
            format!("{head}: the servers in {} are: {}", path.display(), names(servers.servers.keys()))
        }
        (Some(path), false) => format!(
            "{head}: there is no {} to name it in; create it ({{\"servers\": {{{name:?}: {{\"url\": \
             \"https://…\"}}}}}}), point KUA_SERVERS at one, or pass --url",
            path.display()
        ),
        (None, _) => {
            format!("{head}: no servers file (neither KUA_SERVERS, XDG_CONFIG_HOME nor HOME is set); pass --url")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRUNO: &str = "https://deploy.bruno.example";

    fn servers() -> Servers {
        let text = format!(
            r#"{{"default": "bruno", "servers": {{
                "bruno": {{"url": "{BRUNO}/", "token_file": "bruno.token", "ca_file": "/etc/ca/bruno.pem"}},
                "lab": {{"url": "http://10.0.0.7:8790"}}}}}}"#
        );
        Servers::parse(Path::new("/home/u/.config/kua-deploy/servers.json"), &text).unwrap()
    }

    fn wanted() -> Wanted {
        Wanted::default()
    }

    #[test]
    fn the_url_option_wins_over_every_server_name() {
        let w = Wanted {
            url: Some("http://127.0.0.1:9".into()),
            server: Some("lab".into()),
            manifest_server: Some("bruno".into()),
            ..wanted()
        };
        let r = resolve(&w, &servers()).unwrap();
        assert_eq!((r.url.as_str(), r.origin), ("http://127.0.0.1:9", Origin::Url));
        assert_eq!((r.token_file, r.ca_file), (None, None), "no server chosen, none of its files");
    }

    #[test]
    fn the_server_option_wins_over_kua_json_and_the_default() {
        let w = Wanted { server: Some("lab".into()), manifest_server: Some("bruno".into()), ..wanted() };
        let r = resolve(&w, &servers()).unwrap();
        assert_eq!((r.url.as_str(), r.origin), ("http://10.0.0.7:8790", Origin::ServerOption("lab".into())));
    }

    #[test]
    fn the_server_kua_json_names_wins_over_the_default() {
        let mut s = servers();
        s.default = Some("lab".into());
        let r = resolve(&Wanted { manifest_server: Some("bruno".into()), ..wanted() }, &s).unwrap();
        assert_eq!((r.url.as_str(), r.origin), (BRUNO, Origin::Manifest(Some("bruno".into()))));
    }

    #[test]
    fn a_kua_json_server_that_is_a_url_is_used_as_it_is() {
        let r = resolve(&Wanted { manifest_server: Some("https://other.example".into()), ..wanted() }, &servers());
        assert_eq!(r.unwrap().url, "https://other.example");
    }

    #[test]
    fn the_default_server_is_used_when_nothing_names_one() {
        let r = resolve(&wanted(), &servers()).unwrap();
        assert_eq!((r.url.as_str(), r.origin), (BRUNO, Origin::Default("bruno".into())));
    }

    #[test]
    fn the_built_in_url_is_used_without_a_default_or_a_servers_file() {
        let r = resolve(&wanted(), &Servers::default()).unwrap();
        assert_eq!((r.url.as_str(), r.origin), (DEFAULT_URL, Origin::BuiltIn));
    }

    #[test]
    fn a_file_under_the_home_directory_may_be_written_with_a_tilde() {
        let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
        assert_eq!(file_path(Path::new("/etc/kua"), Path::new("~/.config/t")), home.join(".config/t"));
        assert_eq!(file_path(Path::new("/etc/kua"), Path::new("t")), PathBuf::from("/etc/kua/t"));
        assert_eq!(file_path(Path::new("/etc/kua"), Path::new("~t")), PathBuf::from("/etc/kua/~t"), "not ~user");
    }

    #[test]
    fn the_chosen_servers_token_and_ca_files_are_resolved_against_the_servers_file() {
        let r = resolve(&wanted(), &servers()).unwrap();
        assert_eq!(r.token_file, Some(PathBuf::from("/home/u/.config/kua-deploy/bruno.token")));
        assert_eq!(r.ca_file, Some(PathBuf::from("/etc/ca/bruno.pem")), "an absolute path stays as it is");
    }

    #[test]
    fn the_ca_file_option_wins_over_the_servers_ca_file() {
        let r = resolve(&Wanted { ca_file: Some("/tmp/mine.pem".into()), ..wanted() }, &servers()).unwrap();
        assert_eq!(r.ca_file, Some(PathBuf::from("/tmp/mine.pem")));
    }

    #[test]
    fn an_unknown_server_name_lists_the_known_ones_and_the_file() {
        let err = resolve(&Wanted { server: Some("nope".into()), ..wanted() }, &servers()).unwrap_err();
        assert!(err.contains("\"nope\"") && err.contains("--server"), "{err}");
        assert!(err.contains("/home/u/.config/kua-deploy/servers.json") && err.contains("bruno, lab"), "{err}");
    }

    #[test]
    fn a_name_without_a_servers_file_says_where_the_file_was_looked_for() {
        let none = Servers { path: Some("/home/u/.config/kua-deploy/servers.json".into()), ..Servers::default() };
        let err = resolve(&Wanted { manifest_server: Some("bruno".into()), ..wanted() }, &none).unwrap_err();
        assert!(err.contains("kua.json") && err.contains("/home/u/.config/kua-deploy/servers.json"), "{err}");
        assert!(err.contains("--url"), "{err}");
    }

    #[test]
    fn unknown_keys_in_servers_json_are_refused_by_name_with_their_position() {
        let text = "{\"servers\": {\"bruno\": {\"url\": \"https://b\",\n \"tokenfile\": \"t\"}}}";
        let err = Servers::parse(Path::new("/x/servers.json"), text).unwrap_err();
        assert!(err.starts_with("/x/servers.json:2:"), "{err}");
        assert!(err.contains("tokenfile"), "{err}");
        let err = Servers::parse(Path::new("/x/servers.json"), r#"{"defaults": "b"}"#).unwrap_err();
        assert!(err.contains("defaults"), "{err}");
    }

    #[test]
    fn a_servers_json_that_does_not_parse_names_the_file_line_and_column() {
        let err = Servers::parse(Path::new("/x/servers.json"), "{\n  \"servers\": {,}\n}").unwrap_err();
        assert!(err.starts_with("/x/servers.json:2:"), "{err}");
        assert!(!err.contains(" at line "), "the position is given once: {err}");
    }

    #[test]
    fn a_default_that_names_no_server_is_refused() {
        let err = Servers::parse(Path::new("/x/s.json"), r#"{"default": "b", "servers": {}}"#).unwrap_err();
        assert!(err.contains("\"b\"") && err.contains("none"), "{err}");
    }

    #[test]
    fn a_server_url_that_is_not_one_is_refused_naming_the_server() {
        let err = Servers::parse(Path::new("/x/s.json"), r#"{"servers": {"b": {"url": "b:8790"}}}"#).unwrap_err();
        assert!(err.contains("server \"b\""), "{err}");
    }

    #[test]
    fn the_servers_file_is_kua_servers_then_xdg_config_home_then_home() {
        let os = |s: &str| Some(OsString::from(s));
        let at = |l: Location| l.path.map(|p| p.display().to_string());
        let l = Location::from_vars(os("/s.json"), os("/xdg"), os("/home/u"));
        assert!(l.explicit);
        assert_eq!(at(l).as_deref(), Some("/s.json"));
        let l = Location::from_vars(None, os("/xdg"), os("/home/u"));
        assert_eq!((at(l.clone()).as_deref(), l.explicit), (Some("/xdg/kua-deploy/servers.json"), false));
        let relative_xdg_is_ignored = Location::from_vars(os(""), os("xdg"), os("/home/u"));
        assert_eq!(at(relative_xdg_is_ignored).as_deref(), Some("/home/u/.config/kua-deploy/servers.json"));
        assert_eq!(Location::from_vars(None, None, None).path, None);
    }

    #[test]
    fn a_servers_file_named_by_kua_servers_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers.json");
        let err = Servers::load(&Location { path: Some(path.clone()), explicit: true }).unwrap_err();
        assert!(err.contains("servers.json"), "{err}");
        let usual = Servers::load(&Location { path: Some(path), explicit: false }).unwrap();
        assert!(!usual.exists && usual.servers.is_empty());
    }
}
