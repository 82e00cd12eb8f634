//! The registry (`deploy-registry.json`): strict JSON read with positions and checked as a whole, so
//! that `check-config` lists every problem with its app, key and line:column in one pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use jsonc_parser::ast::{Object, ObjectProp, ObjectPropName, Value};
use jsonc_parser::{CollectOptions, ParseOptions};

use crate::model::{AppName, BranchName, ProjectName, ServiceName};

pub const DEFAULT_PATH: &str = "deploy-registry.json";

const DEFAULT_BRANCH: &str = "main";
const DEFAULT_COMPOSE_FILE: &str = "docker-compose.yml";
const DEFAULT_TIMEOUT_S: u64 = 120;
const DEFAULT_STABLE_S: u64 = 5;
const MAX_TIMEOUT_S: u64 = 3600;
const MAX_STABLE_S: u64 = 600;

const TOP_KEYS: &[&str] = &["apps", "hosts", "self"];
const APP_KEYS: &[&str] =
    &["host", "repo", "branch", "compose_files", "project", "services", "migrations", "verify", "rollback", "webhook"];
const HOST_KEYS: &[&str] = &["ssh", "identity_file", "known_hosts_file"];
const MIGRATIONS_KEYS: &[&str] = &["paths", "policy", "service", "command"];
const VERIFY_KEYS: &[&str] = &["timeout_s", "stable_s"];
const WEBHOOK_KEYS: &[&str] = &["repository", "secret_env", "secret_file"];

/// The whole registry, checked: every app in it is usable as it stands.
#[derive(Debug, Clone)]
pub struct Registry {
    pub path: PathBuf,
    pub apps: BTreeMap<AppName, AppConfig>,
    pub hosts: BTreeMap<String, SshHost>,
    pub self_app: Option<AppName>,
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: AppName,
    pub host: HostSpec,
    /// Absolute path of the checkout on the host.
    pub repo: PathBuf,
    pub branch: BranchName,
    /// Relative to `repo`; never absolute and never with a `..` component.
    pub compose_files: Vec<String>,
    pub project: ProjectName,
    /// Not empty, no duplicates.
    pub services: Vec<ServiceName>,
    pub migrations: Option<MigrationsConfig>,
    pub verify: VerifyConfig,
    pub rollback: bool,
    pub webhook: Option<WebhookConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    Local,
    Ssh(SshHost),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    /// The key in the `hosts` map, or the `ssh://` URL as written in the app.
    pub name: String,
    pub user: String,
    /// A host name or IP address; an IPv6 address is kept without its brackets.
    pub host: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct MigrationsConfig {
    /// Relative to the app's `repo`.
    pub paths: Vec<String>,
    pub policy: MigrationPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationPolicy {
    Allow,
    Block,
    Run { service: ServiceName, command: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyConfig {
    pub timeout_s: u64,
    pub stable_s: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self { timeout_s: DEFAULT_TIMEOUT_S, stable_s: DEFAULT_STABLE_S }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `owner/name`.
    pub repository: String,
    pub secret: SecretSource,
}

/// Where a secret lives; the registry never holds the secret itself, and `Debug` shows only where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// The secret, or `None` when it is unset, empty or unreadable: a caller must then refuse, never
    /// fall back to an empty key.
    pub fn read(&self) -> Option<String> {
        let value = match self {
            SecretSource::Env(name) => std::env::var(name).ok()?,
            SecretSource::File(path) => {
                let mut s = std::fs::read_to_string(path).ok()?;
                // Editors and `echo` add a final newline that is not part of the secret.
                while s.ends_with('\n') || s.ends_with('\r') {
                    s.pop();
                }
                s
            }
        };
        (!value.is_empty()).then_some(value)
    }
}

/// One problem in the registry. `line` and `column` are 1-based (characters, not bytes); both are 0
/// when the file could not be read at all.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The registry file, so that each error prints as `file:line:col: ...` on its own.
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub app: Option<String>,
    /// Dotted path from the top of the file, e.g. `apps.hello.verify.timeout_s`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// The key below the app (`verify.timeout_s`), or the whole key for top-level ones.
    pub fn key_in_app(&self) -> &str {
        match &self.app {
            Some(app) => {
                let prefix = format!("apps.{app}");
                match self.key.strip_prefix(prefix.as_str()) {
                    Some(rest) => rest.strip_prefix('.').unwrap_or(rest),
                    None => &self.key,
                }
            }
            None => &self.key,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.path.display())?;
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        if let Some(app) = &self.app {
            write!(f, " app {app:?}:")?;
        }
        let key = self.key_in_app();
        if !key.is_empty() {
            write!(f, " key {key:?}:")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one registry file, in file order.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Registry {
    pub fn load(path: &Path) -> Result<Registry, ConfigErrors> {
        let unreadable = |message: String| ConfigErrors {
            path: path.to_owned(),
            errors: vec![ConfigError {
                path: path.to_owned(),
                line: 0,
                column: 0,
                app: None,
                key: String::new(),
                message,
            }],
        };
        let bytes = std::fs::read(path).map_err(|e| {
            unreadable(format!(
                "cannot read the registry: {e}; check the path (the default is ./{DEFAULT_PATH}, or pass --config PATH)"
            ))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|e| unreadable(format!("the registry is not UTF-8 text ({e}); save it as UTF-8")))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Registry, ConfigErrors> {
        let mut c = Checker::new(text, path);
        let registry = c.check_text();
        c.errors.sort_by_key(|e| (e.line, e.column));
        match registry {
            Some(r) if c.errors.is_empty() => Ok(r),
            _ => Err(ConfigErrors { path: path.to_owned(), errors: c.errors }),
        }
    }

    pub fn app(&self, name: &AppName) -> Option<&AppConfig> {
        self.apps.get(name)
    }
}

/// Where a value sits: the app it belongs to, if any, and its dotted key.
#[derive(Clone)]
struct At {
    app: Option<String>,
    key: String,
}

impl At {
    fn top() -> At {
        At { app: None, key: String::new() }
    }
    fn child(&self, k: &str) -> At {
        let key = if self.key.is_empty() { k.to_owned() } else { format!("{}.{k}", self.key) };
        At { app: self.app.clone(), key }
    }
    fn index(&self, i: usize) -> At {
        At { app: self.app.clone(), key: format!("{}[{i}]", self.key) }
    }
}

/// The known keys of one object, first occurrence of each.
struct Fields<'v, 'a> {
    props: HashMap<&'static str, &'v ObjectProp<'a>>,
}

impl<'v, 'a> Fields<'v, 'a> {
    fn get(&self, key: &str) -> Option<&'v ObjectProp<'a>> {
        self.props.get(key).copied()
    }
}

fn prop_name<'v>(p: &'v ObjectProp<'_>) -> &'v str {
    match &p.name {
        ObjectPropName::String(lit) => lit.value.as_ref(),
        ObjectPropName::Word(lit) => lit.value,
    }
}

fn prop_name_start(p: &ObjectProp<'_>) -> usize {
    match &p.name {
        ObjectPropName::String(lit) => lit.range.start,
        ObjectPropName::Word(lit) => lit.range.start,
    }
}

fn value_start(v: &Value<'_>) -> usize {
    match v {
        Value::StringLit(x) => x.range.start,
        Value::NumberLit(x) => x.range.start,
        Value::BooleanLit(x) => x.range.start,
        Value::Object(x) => x.range.start,
        Value::Array(x) => x.range.start,
        Value::NullKeyword(x) => x.range.start,
    }
}

fn kind_of(v: &Value<'_>) -> &'static str {
    match v {
        Value::StringLit(_) => "a string",
        Value::NumberLit(_) => "a number",
        Value::BooleanLit(_) => "a boolean",
        Value::Object(_) => "an object",
        Value::Array(_) => "a list",
        Value::NullKeyword(_) => "null",
    }
}

struct Checker<'t> {
    path: PathBuf,
    text: &'t str,
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'t> Checker<'t> {
    fn new(text: &'t str, path: &Path) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Checker { path: path.to_owned(), text, line_starts, errors: Vec::new() }
    }

    /// 1-based line and column (in characters, as an editor counts them) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count()) + 1;
        (line, column)
    }

    fn push(&mut self, line: usize, column: usize, at: &At, message: String) {
        self.errors.push(ConfigError {
            path: self.path.clone(),
            line,
            column,
            app: at.app.clone(),
            key: at.key.clone(),
            message,
        });
    }

    fn error(&mut self, at: &At, offset: usize, message: impl Into<String>) {
        let (line, column) = self.position(offset);
        self.push(line, column, at, message.into());
    }

    fn check_text(&mut self) -> Option<Registry> {
        // serde_json is the strict judge of JSON syntax (no comments, trailing commas, leading
        // zeros or raw control characters) and reports the position; jsonc-parser only supplies
        // the spans of a text already known to be valid.
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(self.text) {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let what = full.strip_suffix(&suffix).unwrap_or(&full);
            let column = self.char_column(e.line(), e.column());
            self.push(
                e.line(),
                column,
                &At::top(),
                format!("not valid JSON: {what}; the registry is strict JSON (no comments, no trailing commas)"),
            );
            return None;
        }
        let strict = ParseOptions {
            allow_comments: false,
            allow_loose_object_property_names: false,
            allow_trailing_commas: false,
            allow_missing_commas: false,
            allow_single_quoted_strings: false,
            allow_hexadecimal_numbers: false,
            allow_unary_plus_numbers: false,
            allow_bare_decimal_point_numbers: false,
            allow_non_finite_numbers: false,
            allow_extended_string_escapes: false,
        };
        let text = self.text;
        match jsonc_parser::parse_to_ast(text, &CollectOptions::default(), &strict) {
            Ok(result) => match result.value {
                Some(root) => self.registry(&root),
                None => {
                    self.error(&At::top(), 0, "the file is empty: write a JSON object with an \"apps\" key");
                    None
                }
            },
            Err(e) => {
                self.push(
                    e.line_display(),
                    e.column_display(),
                    &At::top(),
                    format!("not valid JSON: {}; the registry is strict JSON", e.kind()),
                );
                None
            }
        }
    }

    /// serde_json counts columns in bytes; editors count characters.
    fn char_column(&self, line: usize, byte_column: usize) -> usize {
        let Some(&start) = line.checked_sub(1).and_then(|l| self.line_starts.get(l)) else {
            return byte_column;
        };
        let mut end = (start + byte_column.saturating_sub(1)).min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        self.text[start..end].chars().count() + 1
    }

    /// The known keys of `obj`; unknown and repeated keys are reported here.
    fn fields<'v, 'a>(&mut self, obj: &'v Object<'a>, at: &At, allowed: &[&'static str]) -> Fields<'v, 'a> {
        let mut props: HashMap<&'static str, &'v ObjectProp<'a>> = HashMap::new();
        for p in &obj.properties {
            let name = prop_name(p);
            match allowed.iter().find(|k| **k == name) {
                Some(&k) => {
                    if let Some(first) = props.get(k) {
                        let (l, c) = self.position(prop_name_start(first));
                        self.error(
                            &at.child(k),
                            prop_name_start(p),
                            format!("key given twice (first at line {l}, column {c}); keep one"),
                        );
                    } else {
                        props.insert(k, p);
                    }
                }
                None => {
                    let hint = match closest(name, allowed) {
                        Some(k) => format!("did you mean {k:?}? "),
                        None => String::new(),
                    };
                    self.error(
                        &at.child(name),
                        prop_name_start(p),
                        format!("unknown key; {hint}the keys allowed here are: {}", allowed.join(", ")),
                    );
                }
            }
        }
        Fields { props }
    }

    /// The entries of a map-like object (`apps`, `hosts`); repeated names are reported and dropped.
    fn entries<'v, 'a>(&mut self, obj: &'v Object<'a>, at: &At, what: &str) -> Vec<&'v ObjectProp<'a>> {
        let mut seen: HashMap<&'v str, usize> = HashMap::new();
        let mut out = Vec::new();
        for p in &obj.properties {
            let name = prop_name(p);
            if let Some(&first) = seen.get(name) {
                let (l, c) = self.position(first);
                let mut at = at.child(name);
                if what == "app" {
                    at.app = Some(name.to_owned());
                }
                self.error(
                    &at,
                    prop_name_start(p),
                    format!("{what} {name:?} is defined twice (first at line {l}, column {c}); keep one"),
                );
            } else {
                seen.insert(name, prop_name_start(p));
                out.push(p);
            }
        }
        out
    }

    fn missing(&mut self, obj: &Object<'_>, at: &At, key: &str, hint: &str) {
        self.error(&at.child(key), obj.range.start, format!("missing required key {key:?}: {hint}"));
    }

    fn wrong_type(&mut self, v: &Value<'_>, at: &At, expected: &str) {
        self.error(at, value_start(v), format!("expected {expected}, found {}", kind_of(v)));
    }

    fn object<'v, 'a>(&mut self, v: &'v Value<'a>, at: &At, expected: &str) -> Option<&'v Object<'a>> {
        match v {
            Value::Object(o) => Some(o),
            _ => {
                self.wrong_type(v, at, expected);
                None
            }
        }
    }

    fn string<'v>(&mut self, v: &'v Value<'_>, at: &At, expected: &str) -> Option<&'v str> {
        match v {
            Value::StringLit(s) => Some(s.value.as_ref()),
            _ => {
                self.wrong_type(v, at, expected);
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, at: &At, expected: &str) -> Option<bool> {
        match v {
            Value::BooleanLit(b) => Some(b.value),
            _ => {
                self.wrong_type(v, at, expected);
                None
            }
        }
    }

    /// A list of strings with each one's key and offset; `None` when it is not a list or any element
    /// is not a string (each such element is reported).
    fn string_list<'v>(
        &mut self,
        v: &'v Value<'_>,
        at: &At,
        expected: &str,
        element: &str,
    ) -> Option<Vec<(&'v str, At, usize)>> {
        let Value::Array(arr) = v else {
            self.wrong_type(v, at, expected);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, e) in arr.elements.iter().enumerate() {
            match e {
                Value::StringLit(s) => out.push((s.value.as_ref(), at.index(i), s.range.start)),
                _ => {
                    self.wrong_type(e, &at.index(i), element);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn seconds(&mut self, v: &Value<'_>, at: &At, min: u64, max: u64) -> Option<u64> {
        let expected = format!("a whole number of seconds from {min} to {max}");
        let Value::NumberLit(n) = v else {
            self.wrong_type(v, at, &expected);
            return None;
        };
        let parsed = if n.value.bytes().all(|b| b.is_ascii_digit()) { n.value.parse::<u64>().ok() } else { None };
        match parsed {
            Some(s) if (min..=max).contains(&s) => Some(s),
            _ => {
                self.error(at, n.range.start, format!("expected {expected}, found {}", n.value));
                None
            }
        }
    }

    fn registry(&mut self, root: &Value<'_>) -> Option<Registry> {
        let top = At::top();
        let obj = self.object(
            root,
            &top,
            "an object such as {\"apps\": {\"hello\": {\"repo\": \"/srv/apps/hello\", \"services\": [\"web\"]}}}",
        )?;
        let f = self.fields(obj, &top, TOP_KEYS);

        // Hosts first, whatever the key order, because apps refer to them by name.
        let mut hosts = BTreeMap::new();
        let mut host_names = BTreeSet::new();
        if let Some(p) = f.get("hosts") {
            self.hosts(&p.value, &top.child("hosts"), &mut hosts, &mut host_names);
        }

        let mut apps = BTreeMap::new();
        let mut app_names = BTreeSet::new();
        match f.get("apps") {
            Some(p) => self.apps(&p.value, &top.child("apps"), &hosts, &host_names, &mut apps, &mut app_names),
            None => self.missing(
                obj,
                &top,
                "apps",
                "add \"apps\": {\"<name>\": {\"repo\": \"/abs/path\", \"services\": [\"web\"]}}",
            ),
        }

        let mut self_app = None;
        if let Some(p) = f.get("self") {
            let at = top.child("self");
            if let Some(s) = self.string(&p.value, &at, "the name of the app that runs kua-deploy itself") {
                let start = value_start(&p.value);
                match AppName::parse(s) {
                    Err(e) => self.error(&at, start, format!("{e}")),
                    Ok(name) if app_names.contains(name.as_str()) => self_app = Some(name),
                    Ok(_) => {
                        let known: Vec<_> = app_names.iter().map(String::as_str).collect();
                        self.error(
                            &at,
                            start,
                            format!(
                                "no app named {s:?}; name one of the apps ({}) or remove \"self\"",
                                if known.is_empty() { "none yet".to_owned() } else { known.join(", ") }
                            ),
                        );
                    }
                }
            }
        }

        Some(Registry { path: self.path.clone(), apps, hosts, self_app })
    }

    fn hosts(&mut self, v: &Value<'_>, at: &At, hosts: &mut BTreeMap<String, SshHost>, names: &mut BTreeSet<String>) {
        let Some(obj) =
            self.object(v, at, "an object of named hosts such as {\"bruno\": {\"ssh\": \"deploy@bruno.example:22\"}}")
        else {
            return;
        };
        for p in self.entries(obj, at, "host") {
            let name = prop_name(p);
            let hat = at.child(name);
            if let Err(msg) = check_host_name(name) {
                self.error(&hat, prop_name_start(p), msg);
                continue;
            }
            // Remembered even when the entry is bad, so apps using it do not repeat the error.
            names.insert(name.to_owned());
            if let Some(h) = self.host_entry(name, &p.value, &hat) {
                hosts.insert(name.to_owned(), h);
            }
        }
    }

    fn host_entry(&mut self, name: &str, v: &Value<'_>, at: &At) -> Option<SshHost> {
        let obj = self.object(v, at, "an object such as {\"ssh\": \"deploy@bruno.example:22\"}")?;
        let f = self.fields(obj, at, HOST_KEYS);
        let target = match f.get("ssh") {
            None => {
                self.missing(obj, at, "ssh", "give it as \"user@host\" or \"user@host:port\"");
                None
            }
            Some(p) => {
                let kat = at.child("ssh");
                self.string(&p.value, &kat, "a string \"user@host[:port]\"").and_then(|s| {
                    let bare = s.strip_prefix("ssh://").unwrap_or(s);
                    match parse_ssh_target(bare) {
                        Ok(t) => Some(t),
                        Err(msg) => {
                            self.error(&kat, value_start(&p.value), format!("{s:?}: {msg}"));
                            None
                        }
                    }
                })
            }
        };
        let identity_file = self.optional_abs_path(&f, at, "identity_file", "the SSH private key");
        let known_hosts_file = self.optional_abs_path(&f, at, "known_hosts_file", "the known_hosts file");
        let (user, host, port) = target?;
        Some(SshHost {
            name: name.to_owned(),
            user,
            host,
            port,
            identity_file: identity_file?,
            known_hosts_file: known_hosts_file?,
        })
    }

    /// `Some(None)` when absent, `None` when present but bad.
    fn optional_abs_path(&mut self, f: &Fields<'_, '_>, at: &At, key: &str, what: &str) -> Option<Option<PathBuf>> {
        let Some(p) = f.get(key) else {
            return Some(None);
        };
        let kat = at.child(key);
        let s = self.string(&p.value, &kat, &format!("a string: the absolute path of {what}"))?;
        // ssh reads UserKnownHostsFile as a space-separated list, so a space would split the path.
        let spaced = key == "known_hosts_file" && s.chars().any(char::is_whitespace);
        match check_absolute(s) {
            Ok(_) if spaced => {
                self.error(
                    &kat,
                    value_start(&p.value),
                    "must not contain spaces (ssh would split it in two); move the file",
                );
                None
            }
            Ok(path) => Some(Some(path)),
            Err(msg) => {
                self.error(&kat, value_start(&p.value), format!("{msg} for {what}"));
                None
            }
        }
    }

    fn apps(
        &mut self,
        v: &Value<'_>,
        at: &At,
        hosts: &BTreeMap<String, SshHost>,
        host_names: &BTreeSet<String>,
        apps: &mut BTreeMap<AppName, AppConfig>,
        app_names: &mut BTreeSet<String>,
    ) {
        let Some(obj) = self.object(
            v,
            at,
            "an object of apps such as {\"hello\": {\"repo\": \"/srv/apps/hello\", \"services\": [\"web\"]}}",
        ) else {
            return;
        };
        if obj.properties.is_empty() {
            self.error(
                at,
                obj.range.start,
                "no apps: add at least one, e.g. \"hello\": {\"repo\": \"/srv/apps/hello\", \"services\": [\"web\"]}",
            );
            return;
        }
        // (host, project) → the first app that claimed it, and where.
        let mut claimed: HashMap<(String, String), String> = HashMap::new();
        for p in self.entries(obj, at, "app") {
            let key = prop_name(p);
            let aat = At { app: Some(key.to_owned()), key: format!("{}.{key}", at.key) };
            let name = match AppName::parse(key) {
                Ok(n) => {
                    app_names.insert(key.to_owned());
                    Some(n)
                }
                Err(e) => {
                    self.error(&aat, prop_name_start(p), format!("{e}; rename the app"));
                    None
                }
            };
            let Some((config, project_at)) = self.app(name.as_ref(), key, p, &aat, hosts, host_names) else {
                continue;
            };
            let Some(name) = name else { continue };
            let host_id = match &config.host {
                HostSpec::Local => "local".to_owned(),
                HostSpec::Ssh(h) => format!("{}:{}", h.host.to_ascii_lowercase(), h.port),
            };
            let slot = (host_id, config.project.as_str().to_owned());
            if let Some(other) = claimed.get(&slot) {
                self.error(
                    &aat.child("project"),
                    project_at,
                    format!(
                        "Compose project {:?} on this host is already used by app {other:?}; the two would \
                         replace each other's containers: give one of them another \"project\"",
                        config.project.as_str()
                    ),
                );
            } else {
                claimed.insert(slot, name.as_str().to_owned());
            }
            apps.insert(name, config);
        }
    }

    /// One app, and the offset its project came from (for a project clash reported later).
    fn app(
        &mut self,
        name: Option<&AppName>,
        key: &str,
        p: &ObjectProp<'_>,
        at: &At,
        hosts: &BTreeMap<String, SshHost>,
        host_names: &BTreeSet<String>,
    ) -> Option<(AppConfig, usize)> {
        let obj =
            self.object(&p.value, at, "an object such as {\"repo\": \"/srv/apps/hello\", \"services\": [\"web\"]}")?;
        let f = self.fields(obj, at, APP_KEYS);

        let host = match f.get("host") {
            None => Some(HostSpec::Local),
            Some(hp) => self.host_spec(&hp.value, &at.child("host"), hosts, host_names),
        };

        let repo = match f.get("repo") {
            None => {
                self.missing(
                    obj,
                    at,
                    "repo",
                    "give the absolute path of the app's git checkout, e.g. \"/srv/apps/hello\"",
                );
                None
            }
            Some(rp) => {
                let rat = at.child("repo");
                self.string(&rp.value, &rat, "a string: the absolute path of the app's git checkout").and_then(|s| {
                    match check_absolute(s) {
                        Ok(path) => Some(path),
                        Err(msg) => {
                            self.error(&rat, value_start(&rp.value), format!("{msg} of the app's git checkout"));
                            None
                        }
                    }
                })
            }
        };

        let branch = match f.get("branch") {
            None => BranchName::parse(DEFAULT_BRANCH).ok(),
            Some(bp) => {
                let bat = at.child("branch");
                self.string(&bp.value, &bat, "a string: the git branch to deploy, e.g. \"main\"").and_then(|s| {
                    BranchName::parse(s)
                        .map_err(|e| {
                            self.error(&bat, value_start(&bp.value), format!("{e}; name the branch to deploy"))
                        })
                        .ok()
                })
            }
        };

        let compose_files = match f.get("compose_files") {
            None => Some(vec![DEFAULT_COMPOSE_FILE.to_owned()]),
            Some(cp) => self.relative_paths(
                &cp.value,
                &at.child("compose_files"),
                "a list of Compose files relative to repo, e.g. [\"docker-compose.yml\"]",
                "a Compose file path",
            ),
        };

        let (project, project_at) = match f.get("project") {
            None => {
                let at_name = prop_name_start(p);
                match ProjectName::parse(key) {
                    Ok(pn) => (Some(pn), at_name),
                    // An invalid app name was already reported; its project would only repeat it.
                    Err(_) if name.is_none() => (None, at_name),
                    Err(_) => {
                        let hint = match ProjectName::parse(&suggest_project(key)) {
                            Ok(s) => format!(", e.g. \"project\": {:?}", s.as_str()),
                            Err(_) => String::new(),
                        };
                        self.error(
                            &at.child("project"),
                            at_name,
                            format!(
                                "the app name {key:?} is not a valid Compose project name (lowercase letters, \
                                 digits, '-' and '_', starting with a letter or digit), so the default \
                                 project cannot be used: set \"project\"{hint}"
                            ),
                        );
                        (None, at_name)
                    }
                }
            }
            Some(pp) => {
                let pat = at.child("project");
                let start = value_start(&pp.value);
                let project = self
                    .string(&pp.value, &pat, "a string: the Compose project name")
                    .and_then(|s| ProjectName::parse(s).map_err(|e| self.error(&pat, start, format!("{e}"))).ok());
                (project, start)
            }
        };

        let services = match f.get("services") {
            None => {
                self.missing(obj, at, "services", "list the services to build and recreate, e.g. [\"web\"]");
                None
            }
            Some(sp) => self.services(&sp.value, &at.child("services")),
        };

        let migrations = match f.get("migrations") {
            None => Some(None),
            Some(mp) => self.migrations(&mp.value, &at.child("migrations"), services.as_deref()).map(Some),
        };

        let verify = match f.get("verify") {
            None => Some(VerifyConfig::default()),
            Some(vp) => self.verify(&vp.value, &at.child("verify")),
        };

        let rollback = match f.get("rollback") {
            None => Some(true),
            Some(rp) => self.boolean(
                &rp.value,
                &at.child("rollback"),
                "true or false: whether to bring back the previous images when verify fails",
            ),
        };

        let webhook = match f.get("webhook") {
            None => Some(None),
            Some(wp) => self.webhook(&wp.value, &at.child("webhook")).map(Some),
        };

        let config = AppConfig {
            name: name?.clone(),
            host: host?,
            repo: repo?,
            branch: branch?,
            compose_files: compose_files?,
            project: project?,
            services: services?,
            migrations: migrations?,
            verify: verify?,
            rollback: rollback?,
            webhook: webhook?,
        };
        Some((config, project_at))
    }

    fn host_spec(
        &mut self,
        v: &Value<'_>,
        at: &At,
        hosts: &BTreeMap<String, SshHost>,
        host_names: &BTreeSet<String>,
    ) -> Option<HostSpec> {
        let s = self.string(
            v,
            at,
            "a string: \"local\", the name of an entry in \"hosts\", or \"ssh://user@host[:port]\"",
        )?;
        let start = value_start(v);
        if s == "local" {
            return Some(HostSpec::Local);
        }
        if let Some(rest) = s.strip_prefix("ssh://") {
            return match parse_ssh_target(rest) {
                Ok((user, host, port)) => Some(HostSpec::Ssh(SshHost {
                    name: s.to_owned(),
                    user,
                    host,
                    port,
                    identity_file: None,
                    known_hosts_file: None,
                })),
                Err(msg) => {
                    self.error(at, start, format!("{s:?}: {msg}"));
                    None
                }
            };
        }
        if let Some(h) = hosts.get(s) {
            return Some(HostSpec::Ssh(h.clone()));
        }
        if !host_names.contains(s) {
            let known = if host_names.is_empty() {
                "there is no top-level \"hosts\" map".to_owned()
            } else {
                format!("the hosts are: {}", host_names.iter().cloned().collect::<Vec<_>>().join(", "))
            };
            self.error(
                at,
                start,
                format!(
                    "no host named {s:?} ({known}); use \"local\", an \"ssh://user@host[:port]\" URL, \
                     or add {s:?} to the top-level \"hosts\" map"
                ),
            );
        }
        None
    }

    fn services(&mut self, v: &Value<'_>, at: &At) -> Option<Vec<ServiceName>> {
        let items = self.string_list(
            v,
            at,
            "a list of Compose service names, e.g. [\"web\"]",
            "a string: a Compose service name",
        )?;
        if items.is_empty() {
            self.error(
                at,
                value_start(v),
                "the list is empty: name at least one service to build and recreate, e.g. [\"web\"]",
            );
            return None;
        }
        let mut out: Vec<ServiceName> = Vec::new();
        let mut ok = true;
        for (s, iat, start) in items {
            match ServiceName::parse(s) {
                Ok(n) if out.contains(&n) => {
                    self.error(&iat, start, format!("service {s:?} is listed twice; list it once"));
                    ok = false;
                }
                Ok(n) => out.push(n),
                Err(e) => {
                    self.error(&iat, start, format!("{e}"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A non-empty list of paths that stay inside the checkout.
    fn relative_paths(&mut self, v: &Value<'_>, at: &At, expected: &str, element: &str) -> Option<Vec<String>> {
        let items = self.string_list(v, at, expected, &format!("a string: {element} relative to repo"))?;
        if items.is_empty() {
            self.error(at, value_start(v), format!("the list is empty: expected {expected}"));
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (s, iat, start) in items {
            match check_relative(s) {
                Ok(()) if out.iter().any(|o| o == s) => {
                    self.error(&iat, start, format!("{s:?} is listed twice; list it once"));
                    ok = false;
                }
                Ok(()) => out.push(s.to_owned()),
                Err(msg) => {
                    self.error(&iat, start, format!("{s:?} {msg}"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn migrations(&mut self, v: &Value<'_>, at: &At, services: Option<&[ServiceName]>) -> Option<MigrationsConfig> {
        let obj = self.object(
            v,
            at,
            "an object such as {\"paths\": [\"migrations/\"], \"policy\": \"block\"}; remove the key to have no migration gate",
        )?;
        let f = self.fields(obj, at, MIGRATIONS_KEYS);
        let paths = match f.get("paths") {
            None => {
                self.missing(
                    obj,
                    at,
                    "paths",
                    "list the migration directories relative to repo, e.g. [\"migrations/\"]",
                );
                None
            }
            Some(pp) => self.relative_paths(
                &pp.value,
                &at.child("paths"),
                "a list of migration paths relative to repo, e.g. [\"migrations/\"]",
                "a migration path",
            ),
        };
        let policy_word = match f.get("policy") {
            None => {
                self.missing(obj, at, "policy", "set it to \"allow\", \"block\" or \"run\"");
                None
            }
            Some(pp) => {
                let pat = at.child("policy");
                let expected = "\"allow\", \"block\" or \"run\"";
                match self.string(&pp.value, &pat, &format!("a string: {expected}")) {
                    Some(w @ ("allow" | "block" | "run")) => Some(w),
                    Some(w) => {
                        self.error(&pat, value_start(&pp.value), format!("unknown policy {w:?}: expected {expected}"));
                        None
                    }
                    None => None,
                }
            }
        };
        let policy = match policy_word {
            Some("allow") | Some("block") => {
                for k in ["service", "command"] {
                    if let Some(kp) = f.get(k) {
                        self.error(
                            &at.child(k),
                            prop_name_start(kp),
                            format!(
                                "{k:?} is only used with policy \"run\" (this one is {:?}); remove it or set \"policy\": \"run\"",
                                policy_word.unwrap_or_default()
                            ),
                        );
                    }
                }
                if policy_word == Some("allow") {
                    Some(MigrationPolicy::Allow)
                } else {
                    Some(MigrationPolicy::Block)
                }
            }
            Some(_) => {
                let service = self.run_service(obj, &f, at, services);
                let command = self.run_command(obj, &f, at);
                match (service, command) {
                    (Some(service), Some(command)) => Some(MigrationPolicy::Run { service, command }),
                    _ => None,
                }
            }
            None => None,
        };
        Some(MigrationsConfig { paths: paths?, policy: policy? })
    }

    fn run_service(
        &mut self,
        obj: &Object<'_>,
        f: &Fields<'_, '_>,
        at: &At,
        services: Option<&[ServiceName]>,
    ) -> Option<ServiceName> {
        let Some(sp) = f.get("service") else {
            self.missing(
                obj,
                at,
                "service",
                "with policy \"run\", name the service whose new image runs the migrations",
            );
            return None;
        };
        let sat = at.child("service");
        let start = value_start(&sp.value);
        let s = self.string(&sp.value, &sat, "a string: one of the app's services")?;
        let name = ServiceName::parse(s).map_err(|e| self.error(&sat, start, format!("{e}"))).ok()?;
        // When `services` itself is broken it has been reported; checking against it would only add noise.
        if let Some(list) = services {
            if !list.contains(&name) {
                let names: Vec<_> = list.iter().map(ServiceName::as_str).collect();
                self.error(
                    &sat,
                    start,
                    format!(
                        "service {s:?} is not one of the app's services ({}); name one of them, or add it to \"services\"",
                        names.join(", ")
                    ),
                );
                return None;
            }
        }
        Some(name)
    }

    fn run_command(&mut self, obj: &Object<'_>, f: &Fields<'_, '_>, at: &At) -> Option<Vec<String>> {
        let Some(cp) = f.get("command") else {
            self.missing(
                obj,
                at,
                "command",
                "with policy \"run\", give the migration command as a list, e.g. [\"./migrate\", \"up\"]",
            );
            return None;
        };
        let cat = at.child("command");
        let items = self.string_list(
            &cp.value,
            &cat,
            "a list of strings (the argv, not a shell line), e.g. [\"./migrate\", \"up\"]",
            "a string: one argument",
        )?;
        match items.first() {
            None => {
                self.error(
                    &cat,
                    value_start(&cp.value),
                    "the list is empty: give the command and its arguments, e.g. [\"./migrate\", \"up\"]",
                );
                None
            }
            Some(("", iat, start)) => {
                self.error(iat, *start, "the program name is empty: give the command to run first");
                None
            }
            Some(_) => Some(items.into_iter().map(|(s, _, _)| s.to_owned()).collect()),
        }
    }

    fn verify(&mut self, v: &Value<'_>, at: &At) -> Option<VerifyConfig> {
        let obj = self.object(v, at, "an object such as {\"timeout_s\": 120, \"stable_s\": 5}")?;
        let f = self.fields(obj, at, VERIFY_KEYS);
        let timeout = match f.get("timeout_s") {
            None => Some(DEFAULT_TIMEOUT_S),
            Some(tp) => self.seconds(&tp.value, &at.child("timeout_s"), 1, MAX_TIMEOUT_S),
        };
        let stable = match f.get("stable_s") {
            None => Some(DEFAULT_STABLE_S),
            Some(sp) => self.seconds(&sp.value, &at.child("stable_s"), 0, MAX_STABLE_S),
        };
        let (timeout_s, stable_s) = (timeout?, stable?);
        if stable_s >= timeout_s {
            // Point at whichever of the two was written; a default cannot be edited where it stands.
            let (key, offset) = match (f.get("stable_s"), f.get("timeout_s")) {
                (Some(sp), _) => ("stable_s", value_start(&sp.value)),
                (None, Some(tp)) => ("timeout_s", value_start(&tp.value)),
                (None, None) => ("stable_s", obj.range.start),
            };
            self.error(
                &at.child(key),
                offset,
                format!(
                    "stable_s ({stable_s}) must be shorter than timeout_s ({timeout_s}): a container has to stay up \
                     for stable_s within the timeout; lower stable_s or raise timeout_s"
                ),
            );
            return None;
        }
        Some(VerifyConfig { timeout_s, stable_s })
    }

    fn webhook(&mut self, v: &Value<'_>, at: &At) -> Option<WebhookConfig> {
        let obj = self.object(
            v,
            at,
            "an object such as {\"repository\": \"owner/name\", \"secret_env\": \"HELLO_WEBHOOK_SECRET\"}",
        )?;
        let f = self.fields(obj, at, WEBHOOK_KEYS);
        let repository = match f.get("repository") {
            None => {
                self.missing(obj, at, "repository", "give the \"owner/name\" whose pushes deploy this app");
                None
            }
            Some(rp) => {
                let rat = at.child("repository");
                let start = value_start(&rp.value);
                self.string(&rp.value, &rat, "a string \"owner/name\"").and_then(|s| {
                    if is_owner_slash_name(s) {
                        Some(s.to_owned())
                    } else {
                        self.error(
                            &rat,
                            start,
                            format!("{s:?} is not \"owner/name\": give the repository whose pushes deploy this app, e.g. \"kua/hello\""),
                        );
                        None
                    }
                })
            }
        };
        // Each is `None` when absent, `Some(None)` when present but bad (already reported).
        let env = f.get("secret_env").map(|ep| {
            let eat = at.child("secret_env");
            let start = value_start(&ep.value);
            let s =
                self.string(&ep.value, &eat, "a string: the name of the environment variable holding the secret")?;
            if is_env_name(s) {
                return Some(SecretSource::Env(s.to_owned()));
            }
            self.error(
                &eat,
                start,
                format!(
                    "{s:?} is not an environment variable name: use letters, digits and '_', not starting \
                     with a digit (the name of the variable, not the secret)"
                ),
            );
            None
        });
        let file = f.get("secret_file").map(|fp| {
            let fat = at.child("secret_file");
            let start = value_start(&fp.value);
            let s = self.string(&fp.value, &fat, "a string: the absolute path of the file holding the secret")?;
            check_absolute(s)
                .map(SecretSource::File)
                .map_err(|msg| self.error(&fat, start, format!("{msg} of the file holding the secret")))
                .ok()
        });
        let secret = match (env, file) {
            (Some(_), Some(_)) => {
                let fp = f.get("secret_file").map(prop_name_start).unwrap_or(obj.range.start);
                self.error(
                    &at.child("secret_file"),
                    fp,
                    "both \"secret_env\" and \"secret_file\" are given: keep exactly one",
                );
                None
            }
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) => {
                let present = f.get("secret_env").is_some() || f.get("secret_file").is_some();
                if !present {
                    self.error(
                        &at.child("secret_env"),
                        obj.range.start,
                        "missing the secret: set \"secret_env\" (an environment variable name) or \"secret_file\" \
                         (an absolute path)",
                    );
                }
                None
            }
        };
        Some(WebhookConfig { repository: repository?, secret: secret? })
    }
}

/// `user@host[:port]`, host a name, an IPv4 address or a bracketed IPv6 address. Nothing here may
/// start with '-', so no part can become an option of ssh.
fn parse_ssh_target(s: &str) -> Result<(String, String, u16), String> {
    const FORM: &str = "expected user@host or user@host:port, e.g. deploy@bruno.example:22";
    let Some((user, rest)) = s.split_once('@') else {
        return Err(format!("the user is missing; {FORM}"));
    };
    if user.is_empty() {
        return Err(format!("the user is empty; {FORM}"));
    }
    if user.starts_with('-') || !user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "user {user:?} is not valid: use letters, digits, '.', '_' and '-', not starting with '-'"
        ));
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(format!("the IPv6 address has no closing ']'; {FORM}"));
        };
        let ok = addr.contains(':') && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !ok {
            return Err(format!("[{addr}] is not an IPv6 address; {FORM}"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("unexpected {after:?} after the address; {FORM}")),
            },
        };
        (addr, port)
    } else {
        let (host, port) = match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        if host.is_empty() {
            return Err(format!("the host is empty; {FORM}"));
        }
        let ok = host.len() <= 253
            && host.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !ok {
            return Err(format!(
                "host {host:?} is not valid: use letters, digits, '.' and '-', starting with a letter or digit \
                 (an IPv6 address goes in brackets: user@[::1]:22)"
            ));
        }
        (host, port)
    };
    let port = match port {
        None => 22,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok((user.to_owned(), host.to_owned(), port))
}

fn check_host_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if name == "local" {
        Err("\"local\" is reserved for this machine's own engine; give the host another name".to_owned())
    } else if ok {
        Ok(())
    } else {
        Err(format!(
            "host name {name:?} is not valid: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

fn check_absolute(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("the path is empty: give the absolute path".to_owned())
    } else if s.contains('\0') {
        Err("the path contains a NUL character: give the absolute path".to_owned())
    } else if !s.starts_with('/') {
        Err(format!("{s:?} is relative: give the absolute path (starting with '/')"))
    } else {
        Ok(PathBuf::from(s))
    }
}

fn check_relative(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty: give a path relative to repo");
    }
    if s.contains('\0') {
        return Err("contains a NUL character: give a path relative to repo");
    }
    if s.starts_with('/') {
        return Err("is absolute: give a path relative to repo");
    }
    if Path::new(s).components().any(|c| c == Component::ParentDir) {
        return Err("leaves the checkout through '..': give a path inside repo");
    }
    Ok(())
}

fn is_owner_slash_name(s: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    matches!(s.split_once('/'), Some((owner, name)) if part_ok(owner) && part_ok(name))
}

fn is_env_name(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A project name close to an app name, offered in the error that asks for one.
fn suggest_project(app: &str) -> String {
    let mapped: String = app
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '_') => c,
            _ => '-',
        })
        .collect();
    mapped.trim_start_matches(['-', '_']).to_owned()
}

/// The allowed key a typo most likely meant: within two edits, and not a mere two-letter match.
fn closest<'k>(name: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|k| (edit_distance(&name.to_ascii_lowercase(), k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len().max(name.len()) / 2 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"{
  "apps": {
    "hello": {
      "host": "local",
      "repo": "/srv/apps/hello",
      "branch": "main",
      "compose_files": ["docker-compose.yml"],
      "project": "hello",
      "services": ["web"],
      "migrations": { "paths": ["migrations/"], "policy": "block" },
      "verify": { "timeout_s": 120, "stable_s": 5 },
      "rollback": true,
      "webhook": { "repository": "kua/hello", "secret_env": "HELLO_WEBHOOK_SECRET" }
    }
  }
}
"#;

    fn parse(text: &str) -> Result<Registry, ConfigErrors> {
        Registry::parse(text, Path::new("deploy-registry.json"))
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse(text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.errors,
        }
    }

    /// A registry with one app `hello` whose body is `{"repo": ..., "services": ["web"], <extra>}`.
    fn one_app(extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { ", " };
        format!(r#"{{"apps": {{"hello": {{"repo": "/srv/apps/hello", "services": ["web"]{sep}{extra}}}}}}}"#)
    }

    fn only_error(text: &str) -> ConfigError {
        let mut errs = errors(text);
        assert_eq!(errs.len(), 1, "expected one error, got: {errs:#?}");
        errs.remove(0)
    }

    fn hello(r: &Registry) -> &AppConfig {
        r.app(&AppName::parse("hello").unwrap()).expect("app hello")
    }

    #[test]
    fn the_spec_example_registry_parses() {
        let r = parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(r.apps.len(), 1);
        let a = hello(&r);
        assert_eq!(a.name.as_str(), "hello");
        assert_eq!(a.host, HostSpec::Local);
        assert_eq!(a.repo, PathBuf::from("/srv/apps/hello"));
        assert_eq!(a.branch.as_str(), "main");
        assert_eq!(a.compose_files, vec!["docker-compose.yml"]);
        assert_eq!(a.project.as_str(), "hello");
        assert_eq!(a.services, vec![ServiceName::parse("web").unwrap()]);
        let m = a.migrations.as_ref().unwrap();
        assert_eq!(m.paths, vec!["migrations/"]);
        assert_eq!(m.policy, MigrationPolicy::Block);
        assert_eq!(a.verify, VerifyConfig { timeout_s: 120, stable_s: 5 });
        assert!(a.rollback);
        let w = a.webhook.as_ref().unwrap();
        assert_eq!(w.repository, "kua/hello");
        assert_eq!(w.secret, SecretSource::Env("HELLO_WEBHOOK_SECRET".into()));
        assert!(r.hosts.is_empty());
        assert_eq!(r.self_app, None);
        assert_eq!(r.path, PathBuf::from("deploy-registry.json"));
    }

    #[test]
    fn the_spec_hosts_example_parses() {
        let text = r#"{
  "hosts": {"bruno": {"ssh": "deploy@bruno.example:22", "identity_file": "/keys/id",
            "known_hosts_file": "/keys/known_hosts"}},
  "apps": {"hello": {"host": "bruno", "repo": "/srv/apps/hello", "services": ["web"]}}
}"#;
        let r = parse(text).unwrap();
        let bruno = SshHost {
            name: "bruno".into(),
            user: "deploy".into(),
            host: "bruno.example".into(),
            port: 22,
            identity_file: Some("/keys/id".into()),
            known_hosts_file: Some("/keys/known_hosts".into()),
        };
        assert_eq!(r.hosts.get("bruno"), Some(&bruno));
        assert_eq!(hello(&r).host, HostSpec::Ssh(bruno));
    }

    #[test]
    fn defaults_fill_in_host_branch_compose_files_project_verify_rollback() {
        let r = parse(&one_app("")).unwrap();
        let a = hello(&r);
        assert_eq!(a.host, HostSpec::Local);
        assert_eq!(a.branch.as_str(), "main");
        assert_eq!(a.compose_files, vec!["docker-compose.yml"]);
        assert_eq!(a.project.as_str(), "hello");
        assert_eq!(a.verify, VerifyConfig { timeout_s: 120, stable_s: 5 });
        assert!(a.rollback);
        assert!(a.migrations.is_none());
        assert!(a.webhook.is_none());
    }

    #[test]
    fn a_partial_verify_object_keeps_the_other_default() {
        let r = parse(&one_app(r#""verify": {"timeout_s": 300}"#)).unwrap();
        assert_eq!(hello(&r).verify, VerifyConfig { timeout_s: 300, stable_s: 5 });
        let r = parse(&one_app(r#""verify": {"stable_s": 0}"#)).unwrap();
        assert_eq!(hello(&r).verify, VerifyConfig { timeout_s: 120, stable_s: 0 });
    }

    #[test]
    fn unknown_key_is_reported_with_app_key_and_position() {
        let text = "{\n  \"apps\": {\n    \"hello\": {\n      \"repo\": \"/srv/apps/hello\",\n      \"services\": [\"web\"],\n      \"colour\": \"blue\"\n    }\n  }\n}\n";
        let e = only_error(text);
        assert_eq!((e.line, e.column), (6, 7));
        assert_eq!(e.app.as_deref(), Some("hello"));
        assert_eq!(e.key, "apps.hello.colour");
        assert_eq!(e.key_in_app(), "colour");
        assert!(e.message.contains("unknown key"), "{}", e.message);
        assert!(e.message.contains("allowed here are: host, repo, branch,"), "{}", e.message);
        let shown = e.to_string();
        assert!(shown.starts_with("deploy-registry.json:6:7: app \"hello\": key \"colour\": unknown key"), "{shown}");
    }

    #[test]
    fn unknown_key_suggests_the_closest_known_key() {
        let e = only_error(&one_app(r#""rollbak": false"#));
        assert!(e.message.contains("did you mean \"rollback\"?"), "{}", e.message);
        let e = only_error(&one_app(r#""verify": {"timeout": 10}"#));
        assert_eq!(e.key, "apps.hello.verify.timeout");
        assert!(e.message.contains("did you mean \"timeout_s\"?"), "{}", e.message);
        let e = only_error(&one_app(r#""zzz": 1"#));
        assert!(!e.message.contains("did you mean"), "{}", e.message);
    }

    #[test]
    fn nested_keys_are_shown_relative_to_the_app() {
        let text = one_app(r#""verify": {"timeout_s": 0}"#);
        let e = only_error(&text);
        assert_eq!(e.key, "apps.hello.verify.timeout_s");
        let shown = e.to_string();
        assert!(shown.contains(": app \"hello\": key \"verify.timeout_s\": "), "{shown}");
        assert!(shown.contains("expected a whole number of seconds from 1 to 3600"), "{shown}");
        let col = text.find("0}").unwrap() + 1;
        assert_eq!((e.line, e.column), (1, col));
    }

    #[test]
    fn top_level_keys_have_no_app_part() {
        let text = r#"{"apps": {"hello": {"repo": "/r", "services": ["web"]}}, "version": 2}"#;
        let e = only_error(text);
        assert_eq!(e.app, None);
        assert_eq!(e.key, "version");
        let col = text.find("\"version\"").unwrap() + 1;
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("deploy-registry.json:1:{col}: key \"version\": unknown key")), "{shown}");
    }

    #[test]
    fn all_problems_are_reported_not_only_the_first() {
        let text = r#"{
  "apps": {
    "hello": {
      "repo": "srv/apps/hello",
      "services": [],
      "verify": {"timeout_s": "soon"},
      "webhook": {"repository": "kua"},
      "extra": 1
    },
    "world": {
      "services": ["api"],
      "branch": "-evil",
      "rollback": "yes"
    }
  },
  "self": "nobody"
}"#;
        let errs = errors(text);
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for want in [
            "apps.hello.repo",
            "apps.hello.services",
            "apps.hello.verify.timeout_s",
            "apps.hello.webhook.repository",
            "apps.hello.webhook.secret_env",
            "apps.hello.extra",
            "apps.world.repo",
            "apps.world.branch",
            "apps.world.rollback",
            "self",
        ] {
            assert!(keys.contains(&want), "missing error for {want}; got {keys:?}");
        }
        assert_eq!(errs.len(), 10, "{errs:#?}");
        // In file order, so a reader can walk down the file.
        let positions: Vec<_> = errs.iter().map(|e| (e.line, e.column)).collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(positions, sorted);
        let all = ConfigErrors { path: "x".into(), errors: errs }.to_string();
        assert_eq!(all.lines().count(), 10);
    }

    #[test]
    fn missing_required_keys_are_reported_at_the_app_object() {
        let text = "{\"apps\": {\n  \"hello\": {\"branch\": \"main\"}\n}}";
        let errs = errors(text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        for e in &errs {
            assert_eq!((e.line, e.column), (2, 12));
            assert_eq!(e.app.as_deref(), Some("hello"));
            assert!(e.message.starts_with("missing required key"), "{}", e.message);
        }
        assert_eq!(errs[0].key, "apps.hello.repo");
        assert_eq!(errs[1].key, "apps.hello.services");
        assert!(errs[0].message.contains("absolute path"), "{}", errs[0].message);
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_what_was_found() {
        let e = only_error(&one_app(r#""rollback": "yes""#));
        assert_eq!(
            e.message,
            "expected true or false: whether to bring back the previous images when verify fails, found a string"
        );
        let e = only_error(r#"{"apps": {"hello": {"repo": 5, "services": ["web"]}}}"#);
        assert!(e.message.starts_with("expected a string") && e.message.ends_with("found a number"), "{}", e.message);
        let e = only_error(r#"{"apps": {"hello": {"repo": "/r", "services": "web"}}}"#);
        assert!(e.message.contains("list of Compose service names") && e.message.ends_with("found a string"));
        let e = only_error(r#"{"apps": {"hello": {"repo": "/r", "services": ["web", 3]}}}"#);
        assert_eq!(e.key, "apps.hello.services[1]");
        let e = only_error(&one_app(r#""migrations": null"#));
        assert!(e.message.ends_with("found null"), "{}", e.message);
        let e = only_error(r#"["apps"]"#);
        assert_eq!(e.key, "");
        assert!(e.message.ends_with("found a list"));
    }

    #[test]
    fn an_empty_registry_is_an_error_that_says_to_add_an_app() {
        let e = only_error(r#"{"apps": {}}"#);
        assert_eq!(e.key, "apps");
        assert!(e.message.contains("add at least one"), "{}", e.message);
        let e = only_error("{}");
        assert_eq!(e.key, "apps");
        assert!(e.message.starts_with("missing required key \"apps\""), "{}", e.message);
    }

    #[test]
    fn invalid_json_is_one_error_with_the_parser_position() {
        let e = only_error("{\n  \"apps\": {\n    \"hello\": {\"repo\": \"/r\" \"services\": []}\n  }\n}");
        assert_eq!(e.line, 3);
        assert_eq!(e.column, 28);
        assert!(e.message.starts_with("not valid JSON: expected `,` or `}`"), "{}", e.message);
        assert!(!e.message.contains("at line"), "position repeated: {}", e.message);
        assert!(e.to_string().starts_with("deploy-registry.json:3:28: not valid JSON"), "{e}");
        let e = only_error("");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("EOF"), "{}", e.message);
    }

    #[test]
    fn comments_trailing_commas_and_other_json5_are_refused() {
        for text in [
            "{\"apps\": {} // no\n}",
            "{\"apps\": {/* no */}}",
            "{\"apps\": {},}",
            "{\"apps\": [1,]}",
            "{apps: {}}",
            "{'apps': {}}",
            "{\"apps\": 0x10}",
            "{\"apps\": 010}",
            "{\"apps\": +1}",
            "{\"apps\": NaN}",
            "{\"apps\": \"a\tb\"}",
            "{\"apps\": {}} {}",
        ] {
            let e = only_error(text);
            assert!(e.message.starts_with("not valid JSON"), "{text}: {}", e.message);
        }
    }

    #[test]
    fn every_valid_json_form_is_accepted_and_crlf_files_get_right_positions() {
        let text = "{\r\n \"apps\": {\"h\\u0065llo\": {\"repo\": \"/srv/\\ud83d\\ude00\\/x\", \"services\": [\"web\"],\r\n\t\"x\": [1E+2, -0.5e-3, -0, null, {}]}}}";
        let e = only_error(text);
        assert_eq!((e.key.as_str(), e.line, e.column), ("apps.hello.x", 3, 2));
        let r = parse(&text.replace("\t\"x\": [1E+2, -0.5e-3, -0, null, {}]", "\"rollback\": false")).unwrap();
        assert_eq!(hello(&r).repo, PathBuf::from("/srv/\u{1F600}/x"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "{\"apps\": {\"hello\": {\"repo\": \"/srv/é\", \"services\": [\"web\"], \"x\": 1}}}";
        let e = only_error(text);
        let col = text[..text.find("\"x\"").unwrap()].chars().count() + 1;
        assert_eq!((e.line, e.column), (1, col));
        let bad = "{\"apps\": {\"é\": 1 ]}";
        let e = only_error(bad);
        assert_eq!(e.column, bad[..bad.find(']').unwrap()].chars().count() + 1);
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let text = r#"{"apps": {"hello": {"repo": "/a", "services": ["web"], "repo": "/b"}}}"#;
        let e = only_error(text);
        assert_eq!(e.key, "apps.hello.repo");
        assert_eq!(e.column, text.rfind("\"repo\"").unwrap() + 1);
        assert!(e.message.contains("twice (first at line 1, column 21)"), "{}", e.message);

        let text =
            r#"{"apps": {"hello": {"repo": "/a", "services": ["web"]}, "hello": {"repo": "/b", "services": ["web"]}}}"#;
        let e = only_error(text);
        assert_eq!(e.app.as_deref(), Some("hello"));
        assert!(e.message.contains("defined twice"), "{}", e.message);

        let e = only_error(r#"{"apps": {"hello": {"repo": "/a", "services": ["web"]}}, "apps": {}}"#);
        assert_eq!(e.key, "apps");
    }

    #[test]
    fn app_names_must_be_valid() {
        let e = only_error(r#"{"apps": {"../etc": {"repo": "/a", "services": ["web"]}}}"#);
        assert_eq!(e.app.as_deref(), Some("../etc"));
        assert_eq!(e.key, "apps.../etc");
        assert_eq!(e.key_in_app(), "");
        assert_eq!(e.column, 11);
        assert!(e.message.contains("app name") && e.message.ends_with("rename the app"), "{}", e.message);
        let shown = e.to_string();
        assert!(shown.starts_with("deploy-registry.json:1:11: app \"../etc\": app name"), "{shown}");
    }

    #[test]
    fn an_app_name_that_is_not_a_project_name_needs_an_explicit_project() {
        let e = only_error(r#"{"apps": {"Hello.World": {"repo": "/a", "services": ["web"]}}}"#);
        assert_eq!(e.key, "apps.Hello.World.project");
        assert_eq!(e.key_in_app(), "project");
        assert!(e.message.contains("set \"project\", e.g. \"project\": \"hello-world\""), "{}", e.message);
        let r = parse(r#"{"apps": {"Hello.World": {"repo": "/a", "services": ["web"], "project": "hw"}}}"#).unwrap();
        assert_eq!(r.apps.values().next().unwrap().project.as_str(), "hw");
        let e = only_error(&one_app(r#""project": "Hello""#));
        assert_eq!(e.key, "apps.hello.project");
        assert!(e.message.contains("Compose project name"));
    }

    #[test]
    fn ssh_url_forms_parse() {
        let cases = [
            ("ssh://deploy@bruno.example", "deploy", "bruno.example", 22),
            ("ssh://deploy@bruno.example:2222", "deploy", "bruno.example", 2222),
            ("ssh://git_user.x@10.0.0.7:22", "git_user.x", "10.0.0.7", 22),
            ("ssh://root@[::1]", "root", "::1", 22),
            ("ssh://root@[2001:db8::2]:2200", "root", "2001:db8::2", 2200),
            ("ssh://d@h-1", "d", "h-1", 22),
        ];
        for (url, user, host, port) in cases {
            let r = parse(&one_app(&format!(r#""host": "{url}""#))).unwrap_or_else(|e| panic!("{url}: {e}"));
            let HostSpec::Ssh(h) = &hello(&r).host else { panic!("{url} is not ssh") };
            assert_eq!((h.name.as_str(), h.user.as_str(), h.host.as_str(), h.port), (url, user, host, port), "{url}");
            assert_eq!((&h.identity_file, &h.known_hosts_file), (&None, &None));
        }
    }

    #[test]
    fn bad_ssh_urls_are_refused_and_none_can_become_an_option() {
        for url in [
            "ssh://bruno.example",
            "ssh://@bruno.example",
            "ssh://deploy@",
            "ssh://-oProxyCommand=x@h",
            "ssh://deploy@-oProxyCommand=x",
            "ssh://deploy@h:0",
            "ssh://deploy@h:65536",
            "ssh://deploy@h:22x",
            "ssh://deploy@h:",
            "ssh://deploy@h/path",
            "ssh://deploy@h:22/",
            "ssh://deploy@[::1",
            "ssh://deploy@[zz]:22",
            "ssh://deploy@[::1]x",
            "ssh://de ploy@h",
            "ssh://deploy@h@i",
            "ssh://deploy@::1",
        ] {
            let e = only_error(&one_app(&format!(r#""host": "{url}""#)));
            assert_eq!(e.key, "apps.hello.host", "{url}");
            assert!(e.message.starts_with(&format!("{url:?}: ")), "{url}: {}", e.message);
        }
    }

    #[test]
    fn the_hosts_map_is_looked_up_by_name_and_accepts_an_ssh_prefix() {
        let text = r#"{
  "hosts": {"edge": {"ssh": "ssh://ops@edge.example:2222"}},
  "apps": {"hello": {"host": "edge", "repo": "/a", "services": ["web"]}}
}"#;
        let r = parse(text).unwrap();
        let HostSpec::Ssh(h) = &hello(&r).host else { panic!("not ssh") };
        assert_eq!((h.name.as_str(), h.user.as_str(), h.host.as_str(), h.port), ("edge", "ops", "edge.example", 2222));
    }

    #[test]
    fn an_unknown_host_name_is_an_error_listing_the_choices() {
        let text = r#"{
  "hosts": {"bruno": {"ssh": "deploy@bruno.example"}, "edge": {"ssh": "ops@edge"}},
  "apps": {"hello": {"host": "brunoo", "repo": "/a", "services": ["web"]}}
}"#;
        let e = only_error(text);
        assert_eq!(e.key, "apps.hello.host");
        assert!(e.message.contains("no host named \"brunoo\" (the hosts are: bruno, edge)"), "{}", e.message);
        let e = only_error(&one_app(r#""host": "deploy@bruno""#));
        assert!(e.message.contains("there is no top-level \"hosts\" map"), "{}", e.message);
        assert!(e.message.contains("ssh://user@host[:port]"), "{}", e.message);
    }

    #[test]
    fn a_bad_host_entry_is_reported_once_not_again_for_its_apps() {
        let text = r#"{
  "hosts": {"bruno": {"ssh": "bruno.example", "identity_file": "keys/id", "port": 22}},
  "apps": {"hello": {"host": "bruno", "repo": "/a", "services": ["web"]}}
}"#;
        let errs = errors(text);
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["hosts.bruno.ssh", "hosts.bruno.identity_file", "hosts.bruno.port"]);
        assert!(errs.iter().all(|e| e.app.is_none()));
        assert!(errs[1].message.contains("relative"), "{}", errs[1].message);
    }

    #[test]
    fn host_entries_need_ssh_and_a_valid_name() {
        let errs = errors(
            r#"{"hosts": {"local": {"ssh": "a@b"}, "-x": {"ssh": "a@b"}, "ok": {}, "sp": {"ssh": "a@b", "known_hosts_file": "/a b"}},
               "apps": {"hello": {"repo": "/a", "services": ["web"]}}}"#,
        );
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["hosts.local", "hosts.-x", "hosts.ok.ssh", "hosts.sp.known_hosts_file"]);
        assert!(errs[0].message.contains("reserved"));
        assert!(errs[2].message.starts_with("missing required key \"ssh\""));
    }

    #[test]
    fn run_policy_requires_a_service_from_services_and_a_command() {
        let ok = one_app(
            r#""migrations": {"paths": ["db/migrations"], "policy": "run", "service": "web", "command": ["./migrate", "up"]}"#,
        );
        let r = parse(&ok).unwrap();
        assert_eq!(
            hello(&r).migrations.as_ref().unwrap().policy,
            MigrationPolicy::Run {
                service: ServiceName::parse("web").unwrap(),
                command: vec!["./migrate".into(), "up".into()],
            }
        );

        let e = only_error(&one_app(
            r#""migrations": {"paths": ["m"], "policy": "run", "service": "db", "command": ["x"]}"#,
        ));
        assert_eq!(e.key, "apps.hello.migrations.service");
        assert!(e.message.contains("not one of the app's services (web)"), "{}", e.message);

        let errs = errors(&one_app(r#""migrations": {"paths": ["m"], "policy": "run"}"#));
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["apps.hello.migrations.service", "apps.hello.migrations.command"]);

        let e =
            only_error(&one_app(r#""migrations": {"paths": ["m"], "policy": "run", "service": "web", "command": []}"#));
        assert!(e.message.contains("the list is empty"), "{}", e.message);
        let e = only_error(&one_app(
            r#""migrations": {"paths": ["m"], "policy": "run", "service": "web", "command": "./migrate up"}"#,
        ));
        assert!(e.message.contains("not a shell line"), "{}", e.message);
    }

    #[test]
    fn service_or_command_with_another_policy_is_an_error() {
        let errs = errors(&one_app(
            r#""migrations": {"paths": ["m"], "policy": "block", "service": "web", "command": ["x"]}"#,
        ));
        assert_eq!(errs.len(), 2);
        assert!(errs[0].message.contains("only used with policy \"run\""), "{}", errs[0].message);
        assert_eq!(errs[1].key, "apps.hello.migrations.command");
        let r = parse(&one_app(r#""migrations": {"paths": ["m"], "policy": "allow"}"#)).unwrap();
        assert_eq!(hello(&r).migrations.as_ref().unwrap().policy, MigrationPolicy::Allow);
    }

    #[test]
    fn migrations_need_paths_and_a_known_policy() {
        let errs = errors(&one_app(r#""migrations": {}"#));
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["apps.hello.migrations.paths", "apps.hello.migrations.policy"]);
        let e = only_error(&one_app(r#""migrations": {"paths": ["m"], "policy": "ask"}"#));
        assert_eq!(e.message, "unknown policy \"ask\": expected \"allow\", \"block\" or \"run\"");
        let e = only_error(&one_app(r#""migrations": {"paths": [], "policy": "allow"}"#));
        assert!(e.message.contains("the list is empty"));
    }

    #[test]
    fn paths_inside_the_repo_must_be_relative_without_dotdot() {
        for (bad, why) in [
            ("/etc/compose.yml", "absolute"),
            ("../other/docker-compose.yml", "'..'"),
            ("deploy/../../x.yml", "'..'"),
            ("", "empty"),
        ] {
            let e = only_error(&one_app(&format!(r#""compose_files": ["{bad}"]"#)));
            assert_eq!(e.key, "apps.hello.compose_files[0]");
            assert!(e.message.contains(why), "{bad}: {}", e.message);
            let e = only_error(&one_app(&format!(r#""migrations": {{"paths": ["ok", "{bad}"], "policy": "block"}}"#)));
            assert_eq!(e.key, "apps.hello.migrations.paths[1]");
        }
        let e = only_error(&one_app(r#""compose_files": []"#));
        assert!(e.message.contains("the list is empty"));
        let e = only_error(&one_app(r#""compose_files": ["a.yml", "a.yml"]"#));
        assert!(e.message.contains("listed twice"));
        let r = parse(&one_app(r#""compose_files": ["compose.yml", "./deploy/prod.yml"]"#)).unwrap();
        assert_eq!(hello(&r).compose_files, vec!["compose.yml", "./deploy/prod.yml"]);
    }

    #[test]
    fn repo_must_be_an_absolute_path() {
        let e = only_error(r#"{"apps": {"hello": {"repo": "srv/hello", "services": ["web"]}}}"#);
        assert_eq!(e.key, "apps.hello.repo");
        assert!(e.message.contains("relative") && e.message.contains("absolute"), "{}", e.message);
        let e = only_error(r#"{"apps": {"hello": {"repo": "", "services": ["web"]}}}"#);
        assert!(e.message.contains("empty"));
    }

    #[test]
    fn services_must_be_non_empty_valid_and_unique() {
        let e = only_error(r#"{"apps": {"hello": {"repo": "/a", "services": []}}}"#);
        assert!(e.message.contains("name at least one service"), "{}", e.message);
        let e = only_error(r#"{"apps": {"hello": {"repo": "/a", "services": ["web", "web"]}}}"#);
        assert_eq!(e.key, "apps.hello.services[1]");
        assert!(e.message.contains("listed twice"));
        let e = only_error(r#"{"apps": {"hello": {"repo": "/a", "services": ["-web"]}}}"#);
        assert!(e.message.contains("service name"));
    }

    #[test]
    fn branch_must_be_a_safe_git_branch() {
        let e = only_error(&one_app(r#""branch": "--upload-pack=x""#));
        assert_eq!(e.key, "apps.hello.branch");
        let r = parse(&one_app(r#""branch": "release/2.0""#)).unwrap();
        assert_eq!(hello(&r).branch.as_str(), "release/2.0");
    }

    #[test]
    fn verify_seconds_are_whole_and_in_range_and_stable_is_shorter_than_timeout() {
        for (verify, key) in [
            (r#"{"timeout_s": 0}"#, "timeout_s"),
            (r#"{"timeout_s": 3601}"#, "timeout_s"),
            (r#"{"timeout_s": 12.5}"#, "timeout_s"),
            (r#"{"timeout_s": -1}"#, "timeout_s"),
            (r#"{"timeout_s": 1e3}"#, "timeout_s"),
            (r#"{"timeout_s": 99999999999999999999999}"#, "timeout_s"),
            (r#"{"stable_s": 601, "timeout_s": 3600}"#, "stable_s"),
            (r#"{"timeout_s": 10, "stable_s": 10}"#, "stable_s"),
            (r#"{"timeout_s": 3}"#, "timeout_s"),
        ] {
            let e = only_error(&one_app(&format!(r#""verify": {verify}"#)));
            assert_eq!(e.key, format!("apps.hello.verify.{key}"), "{verify}");
        }
        let e = only_error(&one_app(r#""verify": {"timeout_s": 10, "stable_s": 10}"#));
        assert!(e.message.contains("must be shorter than timeout_s"), "{}", e.message);
        let e = only_error(&one_app(r#""verify": {"timeout_s": 12.5}"#));
        assert_eq!(e.message, "expected a whole number of seconds from 1 to 3600, found 12.5");
        let r = parse(&one_app(r#""verify": {"timeout_s": 3600, "stable_s": 600}"#)).unwrap();
        assert_eq!(hello(&r).verify, VerifyConfig { timeout_s: 3600, stable_s: 600 });
    }

    #[test]
    fn webhook_needs_exactly_one_secret_source() {
        let e = only_error(&one_app(r#""webhook": {"repository": "kua/hello"}"#));
        assert!(e.message.contains("missing the secret"), "{}", e.message);
        let e = only_error(&one_app(
            r#""webhook": {"repository": "kua/hello", "secret_env": "S", "secret_file": "/run/secrets/s"}"#,
        ));
        assert_eq!(e.key, "apps.hello.webhook.secret_file");
        assert!(e.message.contains("keep exactly one"), "{}", e.message);
        let r = parse(&one_app(r#""webhook": {"repository": "kua/hello", "secret_file": "/run/secrets/s"}"#)).unwrap();
        assert_eq!(hello(&r).webhook.as_ref().unwrap().secret, SecretSource::File("/run/secrets/s".into()));
        let e = only_error(&one_app(r#""webhook": {"repository": "kua/hello", "secret_file": "s.txt"}"#));
        assert!(e.message.contains("relative"));
    }

    #[test]
    fn secret_env_must_be_a_variable_name() {
        for bad in ["1ABC", "MY-SECRET", "", "s3cr3t value"] {
            let e =
                only_error(&one_app(&format!(r#""webhook": {{"repository": "kua/hello", "secret_env": "{bad}"}}"#)));
            assert_eq!(e.key, "apps.hello.webhook.secret_env", "{bad}");
            assert!(e.message.contains("not an environment variable name"), "{}", e.message);
        }
        parse(&one_app(r#""webhook": {"repository": "kua/hello", "secret_env": "_x9"}"#)).unwrap();
    }

    #[test]
    fn webhook_repository_must_be_owner_slash_name() {
        for bad in ["kua", "kua/", "/hello", "kua/hello/x", "kua/..", "a b/c", "https://forge/kua/hello"] {
            let e = only_error(&one_app(&format!(r#""webhook": {{"repository": "{bad}", "secret_env": "S"}}"#)));
            assert_eq!(e.key, "apps.hello.webhook.repository", "{bad}");
            assert!(e.message.contains("e.g. \"kua/hello\""), "{}", e.message);
        }
        parse(&one_app(r#""webhook": {"repository": "Kua-Org/hello.world_2", "secret_env": "S"}"#)).unwrap();
    }

    #[test]
    fn two_apps_with_the_same_project_on_the_same_host_conflict() {
        let text = r#"{"hosts": {"b": {"ssh": "deploy@Bruno.example"}},
 "apps": {
  "a": {"repo": "/a", "services": ["web"], "project": "shop"},
  "b": {"repo": "/b", "services": ["web"], "project": "shop"},
  "c": {"repo": "/c", "services": ["web"], "project": "shop", "host": "b"},
  "d": {"repo": "/d", "services": ["web"], "project": "shop", "host": "ssh://root@bruno.example:22"},
  "e": {"repo": "/e", "services": ["web"], "project": "shop", "host": "ssh://root@bruno.example:2222"}
 }}"#;
        let errs = errors(text);
        let found: Vec<_> = errs.iter().map(|e| (e.app.as_deref().unwrap(), e.key.as_str())).collect();
        assert_eq!(found, [("b", "apps.b.project"), ("d", "apps.d.project")]);
        assert!(errs[0].message.contains("already used by app \"a\""), "{}", errs[0].message);
        assert!(errs[1].message.contains("already used by app \"c\""), "{}", errs[1].message);
        assert_eq!(errs[0].line, 4);
    }

    #[test]
    fn the_default_project_counts_for_conflicts() {
        let e = only_error(
            r#"{"apps": {"shop": {"repo": "/a", "services": ["web"]}, "shop2": {"repo": "/b", "services": ["web"], "project": "shop"}}}"#,
        );
        assert_eq!(e.app.as_deref(), Some("shop2"));
    }

    #[test]
    fn self_must_name_an_app() {
        let r = parse(r#"{"apps": {"kua-deploy": {"repo": "/srv/kua", "services": ["kua"]}}, "self": "kua-deploy"}"#)
            .unwrap();
        assert_eq!(r.self_app.unwrap().as_str(), "kua-deploy");
        let e = only_error(r#"{"self": "kua", "apps": {"hello": {"repo": "/a", "services": ["web"]}}}"#);
        assert_eq!((e.key.as_str(), e.app.as_deref()), ("self", None));
        assert!(e.message.contains("name one of the apps (hello)"), "{}", e.message);
        let e = only_error(r#"{"self": 1, "apps": {"hello": {"repo": "/a", "services": ["web"]}}}"#);
        assert!(e.message.ends_with("found a number"));
    }

    #[test]
    fn self_naming_a_broken_app_does_not_add_an_error() {
        let e = only_error(r#"{"self": "hello", "apps": {"hello": {"repo": "a", "services": ["web"]}}}"#);
        assert_eq!(e.key, "apps.hello.repo");
    }

    #[test]
    fn registry_app_looks_up_by_name() {
        let r = parse(SPEC_EXAMPLE).unwrap();
        assert!(r.app(&AppName::parse("hello").unwrap()).is_some());
        assert!(r.app(&AppName::parse("nope").unwrap()).is_none());
    }

    #[test]
    fn load_reads_the_file_and_reports_one_that_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy-registry.json");
        std::fs::write(&path, SPEC_EXAMPLE).unwrap();
        let r = Registry::load(&path).unwrap();
        assert_eq!(r.path, path);

        let missing = dir.path().join("nope.json");
        let err = Registry::load(&missing).unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.path, missing);
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{}: cannot read the registry", missing.display())), "{shown}");

        std::fs::write(&path, b"{\"apps\": \xff}").unwrap();
        let err = Registry::load(&path).unwrap_err();
        assert!(err.errors[0].message.contains("not UTF-8"));
    }

    #[test]
    fn secret_source_read_trims_the_final_newline_and_treats_empty_as_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        assert_eq!(SecretSource::File(file.clone()).read().as_deref(), Some("s3cr3t"));
        std::fs::write(&file, "s3cr3t\r\n").unwrap();
        assert_eq!(SecretSource::File(file.clone()).read().as_deref(), Some("s3cr3t"));
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(SecretSource::File(file).read(), None);
        assert_eq!(SecretSource::File(dir.path().join("missing")).read(), None);

        let var = "KUA_CONFIG_TEST_SECRET_7F3A";
        assert_eq!(SecretSource::Env(var.into()).read(), None);
        std::env::set_var(var, "");
        assert_eq!(SecretSource::Env(var.into()).read(), None);
        std::env::set_var(var, "abc");
        assert_eq!(SecretSource::Env(var.into()).read().as_deref(), Some("abc"));
        std::env::remove_var(var);
    }

    #[test]
    fn config_errors_print_one_per_line_in_the_documented_form() {
        let err = parse(&one_app(r#""verify": {"timeout_s": 0}, "colour": 1"#)).unwrap_err();
        let shown = err.to_string();
        let lines: Vec<_> = shown.lines().collect();
        assert_eq!(lines.len(), 2, "{shown}");
        assert!(lines[0].starts_with("deploy-registry.json:1:"), "{shown}");
        assert!(lines.iter().any(|l| l.contains(": app \"hello\": key \"verify.timeout_s\": ")), "{shown}");
        assert!(lines.iter().any(|l| l.contains(": app \"hello\": key \"colour\": unknown key")), "{shown}");
        let as_error: &dyn std::error::Error = &err;
        assert_eq!(as_error.to_string(), shown);
    }
}
