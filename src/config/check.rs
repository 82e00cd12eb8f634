//! The checker: walks the JSON syntax tree (with byte positions) and turns it into a [`Registry`],
//! collecting every problem as a [`ConfigError`] instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use jsonc_parser::ast::{Object, ObjectProp, ObjectPropName, Value};
use jsonc_parser::{CollectOptions, ParseOptions};

use super::*;
use crate::model::{AppName, BranchName, ProjectName, ServiceName};

/// What every app is read against: the hosts it may name and the default secrets command.
struct Around<'r> {
    hosts: &'r BTreeMap<String, SshHost>,
    host_names: &'r BTreeSet<String>,
    default_secrets: Option<&'r SecretsConfig>,
    default_status: Option<&'r StatusDraft>,
    default_notify: &'r [NotifyTarget],
}

/// A `status` as written: its repository may still have to come from the app's webhook.
#[derive(Clone)]
struct StatusDraft {
    forge: Forge,
    api: String,
    token: SecretSource,
    repository: Option<String>,
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

/// Checks a whole registry text: the registry, or every problem found, in file order.
pub(super) fn check(text: &str, path: &Path) -> Result<Registry, Vec<ConfigError>> {
    let mut c = Checker::new(text, path);
    let registry = c.check_text();
    c.errors.sort_by_key(|e| (e.line, e.column));
    match registry {
        Some(r) if c.errors.is_empty() => Ok(r),
        _ => Err(c.errors),
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
        self.whole_in(v, at, (min, max), &format!("a whole number of seconds from {min} to {max}"), "")
    }

    /// A whole number within `range` (both ends in); `too_small` is added to the error of one below it.
    fn whole_in(&mut self, v: &Value<'_>, at: &At, range: (u64, u64), expected: &str, too_small: &str) -> Option<u64> {
        let Value::NumberLit(n) = v else {
            self.wrong_type(v, at, expected);
            return None;
        };
        let parsed = if n.value.bytes().all(|b| b.is_ascii_digit()) { n.value.parse::<u64>().ok() } else { None };
        match parsed {
            Some(x) if (range.0..=range.1).contains(&x) => Some(x),
            Some(x) if x < range.0 && !too_small.is_empty() => {
                self.error(at, n.range.start, format!("expected {expected}, found {}, {too_small}", n.value));
                None
            }
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
        let mut limits = DeployLimits::default();
        if let Some(p) = f.get("hosts") {
            self.hosts(&p.value, &top.child("hosts"), &mut hosts, &mut host_names, &mut limits.per_host);
        }
        if let Some(p) = f.get("limits") {
            self.limits(&p.value, &top.child("limits"), &mut limits);
        }

        // The default secrets command too: every app without its own takes it.
        let default_secrets = match f.get("secrets") {
            None => Some(None),
            Some(p) => self.secrets_or_null(&p.value, &top.child("secrets")),
        };
        let default_secrets = default_secrets.flatten();
        let default_status = match f.get("status") {
            None => Some(None),
            Some(p) => self.status_or_null(&p.value, &top.child("status")),
        };
        let default_status = default_status.flatten();
        let default_notify = match f.get("notify") {
            None => Some(Vec::new()),
            Some(p) => self.notify(&p.value, &top.child("notify")),
        };
        let default_notify = default_notify.unwrap_or_default();
        let public_url = f.get("public_url").and_then(|p| {
            let at = top.child("public_url");
            let s = self.string(
                &p.value,
                &at,
                "a string: the URL people reach this server at, e.g. \"https://deploy.example\"",
            )?;
            self.http_url(s, &at, value_start(&p.value)).map(|u| u.trim_end_matches('/').to_owned())
        });

        let mut apps = BTreeMap::new();
        let mut app_names = BTreeSet::new();
        match f.get("apps") {
            Some(p) => {
                let around = Around {
                    hosts: &hosts,
                    host_names: &host_names,
                    default_secrets: default_secrets.as_ref(),
                    default_status: default_status.as_ref(),
                    default_notify: &default_notify,
                };
                self.apps(&p.value, &top.child("apps"), &around, &mut apps, &mut app_names)
            }
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
                    Ok(name) if app_names.contains(name.as_str()) => {
                        // The handoff recreates and judges kua-deploy's own service alone.
                        if let Some(app) = apps.get(&name) {
                            if app.host != HostSpec::Local {
                                self.error(&at, start, format!("app {s:?} is on host {:?}: the self app runs where kua-deploy runs, on \"local\"", app.host.label()));
                            } else if app.services.len() > 1 {
                                self.error(&at, start, format!("app {s:?} lists {} services: the self app must list only kua-deploy's own service; put the others in an app of their own", app.services.len()));
                            }
                        }
                        self_app = Some(name)
                    }
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

        Some(Registry { path: self.path.clone(), apps, hosts, self_app, public_url, limits })
    }

    fn hosts(
        &mut self,
        v: &Value<'_>,
        at: &At,
        hosts: &mut BTreeMap<String, SshHost>,
        names: &mut BTreeSet<String>,
        max_deploys: &mut BTreeMap<String, usize>,
    ) {
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
            if let Some(h) = self.host_entry(name, &p.value, &hat, max_deploys) {
                hosts.insert(name.to_owned(), h);
            }
        }
    }

    /// `limits`: `deploys` and `deploys_per_host`, each a count of at least 1.
    fn limits(&mut self, v: &Value<'_>, at: &At, limits: &mut DeployLimits) {
        let Some(obj) = self.object(v, at, "an object such as {\"deploys\": 8, \"deploys_per_host\": 2}") else {
            return;
        };
        let f = self.fields(obj, at, LIMITS_KEYS);
        if let Some(p) = f.get("deploys") {
            if let Some(n) = self.deploy_count(&p.value, &at.child("deploys"), "on all hosts together") {
                limits.deploys = n;
            }
        }
        if let Some(p) = f.get("deploys_per_host") {
            if let Some(n) = self.deploy_count(&p.value, &at.child("deploys_per_host"), "on each host") {
                limits.deploys_per_host = n;
            }
        }
    }

    /// How many deploys may run at once `where_`: a whole number from 1.
    fn deploy_count(&mut self, v: &Value<'_>, at: &At, where_: &str) -> Option<usize> {
        let expected = format!("a whole number from 1 to {MAX_DEPLOYS}: how many deploys may run at once {where_}");
        let n = self.whole_in(v, at, (1, MAX_DEPLOYS), &expected, "which would never start a deploy")?;
        Some(n as usize)
    }

    fn host_entry(
        &mut self,
        name: &str,
        v: &Value<'_>,
        at: &At,
        max_deploys: &mut BTreeMap<String, usize>,
    ) -> Option<SshHost> {
        let obj = self.object(v, at, "an object such as {\"ssh\": \"deploy@bruno.example:22\"}")?;
        let f = self.fields(obj, at, HOST_KEYS);
        if let Some(p) = f.get("max_deploys") {
            if let Some(n) = self.deploy_count(&p.value, &at.child("max_deploys"), "on this host") {
                max_deploys.insert(name.to_owned(), n);
            }
        }
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
        around: &Around<'_>,
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
            let Some((config, project_at)) = self.app(name.as_ref(), p, &aat, around) else {
                continue;
            };
            let Some(name) = name else { continue };
            let host_id = match &config.host {
                HostSpec::Local => "local".to_owned(),
                HostSpec::Ssh(h) => format!("{}:{}", h.host.to_ascii_lowercase(), h.port),
            };
            // Two apps without a project but on one checkout resolve to the same project too.
            let project_key = match &config.project {
                Some(p) => p.as_str().to_owned(),
                None => format!("repo:{}", config.repo.display()),
            };
            let slot = (host_id, project_key);
            if let Some(other) = claimed.get(&slot) {
                self.error(
                    &aat.child("project"),
                    project_at,
                    format!(
                        "Compose project {} on this host is already used by app {other:?}; the two would \
                         replace each other's containers: give one of them another \"project\"",
                        config.project.as_ref().map_or_else(
                            || format!("of the checkout {}", config.repo.display()),
                            |p| format!("{:?}", p.as_str())
                        )
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
        p: &ObjectProp<'_>,
        at: &At,
        around: &Around<'_>,
    ) -> Option<(AppConfig, usize)> {
        let (hosts, host_names, default_secrets) = (around.hosts, around.host_names, around.default_secrets);
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
            // Without it, Compose discovers the files itself, override file included.
            None => Some(None),
            Some(cp) => self
                .relative_paths(
                    &cp.value,
                    &at.child("compose_files"),
                    "a list of Compose files relative to repo, e.g. [\"docker-compose.yml\"]",
                    "a Compose file path",
                    check_compose_file,
                )
                .map(Some),
        };

        // Without a project, Compose resolves it in the checkout (top-level `name:`,
        // COMPOSE_PROJECT_NAME in `.env`, the directory) at each deploy.
        let (project, project_at) = match f.get("project") {
            None => (Some(None), prop_name_start(p)),
            Some(pp) => {
                let pat = at.child("project");
                let start = value_start(&pp.value);
                let project = self
                    .string(&pp.value, &pat, "a string: the Compose project name")
                    .and_then(|s| ProjectName::parse(s).map_err(|e| self.error(&pat, start, format!("{e}"))).ok());
                (project.map(Some), start)
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

        // An app's own key replaces the default; `null` turns secrets off for it.
        let secrets = match f.get("secrets") {
            None => Some(default_secrets.cloned()),
            Some(sp) => self.secrets_or_null(&sp.value, &at.child("secrets")),
        };

        // Like secrets: the app's own `status` or `notify` replaces the default, `null` is none.
        let status = match f.get("status") {
            None => Some(around.default_status.cloned()),
            Some(sp) => self.status_or_null(&sp.value, &at.child("status")),
        };
        let status = status.and_then(|draft| {
            let Some(draft) = draft else { return Some(None) };
            let written = webhook.as_ref().and_then(|w| w.as_ref()).map(|w| w.repository.clone());
            let repository = draft.repository.clone().or(written);
            match repository {
                Some(repository) => {
                    Some(Some(StatusConfig { forge: draft.forge, api: draft.api, token: draft.token, repository }))
                }
                None if f.get("webhook").is_some() => None, // its problem is already reported
                None => {
                    let offset = f.get("status").map_or(obj.range.start, prop_name_start);
                    self.error(
                        &at.child("status"),
                        offset,
                        "no repository to set commit statuses on: add \"repository\" to \"status\" \
                         (\"owner/name\", or a GitLab project's path or id), or give the app a \"webhook\" with one",
                    );
                    None
                }
            }
        });
        let notify = match f.get("notify") {
            None => Some(around.default_notify.to_vec()),
            Some(np) => self.notify(&np.value, &at.child("notify")),
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
            secrets: secrets?,
            status: status?,
            notify: notify?,
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
    /// A list of paths in the checkout, each checked by `check` (which says what is wrong with one).
    fn relative_paths(
        &mut self,
        v: &Value<'_>,
        at: &At,
        expected: &str,
        element: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Option<Vec<String>> {
        let items = self.string_list(v, at, expected, &format!("a string: {element} relative to repo"))?;
        if items.is_empty() {
            self.error(at, value_start(v), format!("the list is empty: expected {expected}"));
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (s, iat, start) in items {
            match check(s) {
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
                |s| check_relative(s).map_err(str::to_owned),
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

    /// `secrets`: `null` (none), or `{"command": [...], "format": "dotenv"|"json", "timeout_s": n}`.
    fn secrets_or_null(&mut self, v: &Value<'_>, at: &At) -> Option<Option<SecretsConfig>> {
        if matches!(v, Value::NullKeyword(_)) {
            return Some(None);
        }
        let example =
            "an object such as {\"command\": [\"kua-vault\", \"export\", \"{app}\"], \"format\": \"dotenv\"}, \
                       or null to turn secrets off";
        let obj = self.object(v, at, example)?;
        let f = self.fields(obj, at, SECRETS_KEYS);
        let command = match f.get("command") {
            None => {
                self.missing(
                    obj,
                    at,
                    "command",
                    "give the vault command as a list, e.g. [\"kua-vault\", \"export\", \"{app}\"]",
                );
                None
            }
            Some(cp) => {
                let cat = at.child("command");
                let items = self.string_list(
                    &cp.value,
                    &cat,
                    "a list of strings (the argv, run with no shell), e.g. [\"kua-vault\", \"export\", \"{app}\"]",
                    "a string: one argument",
                );
                match items.as_deref() {
                    None => None,
                    Some([]) => {
                        self.error(
                            &cat,
                            value_start(&cp.value),
                            "the list is empty: give the command and its arguments",
                        );
                        None
                    }
                    Some([("", iat, start), ..]) => {
                        let (iat, start) = (iat.clone(), *start);
                        self.error(&iat, start, "the program name is empty: give the command to run first");
                        None
                    }
                    Some(items) => Some(items.iter().map(|(s, _, _)| (*s).to_owned()).collect::<Vec<_>>()),
                }
            }
        };
        let format = match f.get("format") {
            None => Some(SecretsFormat::Dotenv),
            Some(fp) => {
                let fat = at.child("format");
                match self.string(&fp.value, &fat, "\"dotenv\" or \"json\"") {
                    Some("dotenv") => Some(SecretsFormat::Dotenv),
                    Some("json") => Some(SecretsFormat::Json),
                    Some(other) => {
                        self.error(
                            &fat,
                            value_start(&fp.value),
                            format!("unknown format {other:?}: \"dotenv\" (KEY=VALUE lines) or \"json\" (one object of strings)"),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let timeout_s = match f.get("timeout_s") {
            None => Some(DEFAULT_SECRETS_TIMEOUT_S),
            Some(tp) => self.seconds(&tp.value, &at.child("timeout_s"), 1, MAX_SECRETS_TIMEOUT_S),
        };
        Some(Some(SecretsConfig { command: command?, format: format?, timeout_s: timeout_s? }))
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
                    if is_repository_path(s) {
                        Some(s.to_owned())
                    } else {
                        self.error(
                            &rat,
                            start,
                            format!(
                                "{s:?} is not \"owner/name\" (or \"group/subgroup/name\"): give the repository whose \
                                 pushes deploy this app, e.g. \"kua/hello\""
                            ),
                        );
                        None
                    }
                })
            }
        };
        let secret = self.secret_source(&f, obj, at, ("secret_env", "secret_file"), "the secret");
        Some(WebhookConfig { repository: repository?, secret: secret? })
    }
}

impl Checker<'_> {
    /// A secret given as `keys.0` (an environment variable's name) or `keys.1` (an absolute file
    /// path), exactly one of them; `what` names it in the messages.
    fn secret_source(
        &mut self,
        f: &Fields<'_, '_>,
        obj: &Object<'_>,
        at: &At,
        keys: (&str, &str),
        what: &str,
    ) -> Option<SecretSource> {
        let (env_key, file_key) = keys;
        // Each is `None` when absent, `Some(None)` when present but bad (already reported).
        let env = f.get(env_key).map(|ep| {
            let eat = at.child(env_key);
            let start = value_start(&ep.value);
            let s = self.string(
                &ep.value,
                &eat,
                &format!("a string: the name of the environment variable holding {what}"),
            )?;
            if is_env_name(s) {
                return Some(SecretSource::Env(s.to_owned()));
            }
            self.error(
                &eat,
                start,
                format!(
                    "{s:?} is not an environment variable name: use letters, digits and '_', not starting \
                     with a digit (the name of the variable, not {what})"
                ),
            );
            None
        });
        let file = f.get(file_key).map(|fp| {
            let fat = at.child(file_key);
            let start = value_start(&fp.value);
            let s = self.string(&fp.value, &fat, &format!("a string: the absolute path of the file holding {what}"))?;
            check_absolute(s)
                .map(SecretSource::File)
                .map_err(|msg| self.error(&fat, start, format!("{msg} of the file holding {what}")))
                .ok()
        });
        match (env, file) {
            (Some(_), Some(_)) => {
                let fp = f.get(file_key).map(prop_name_start).unwrap_or(obj.range.start);
                self.error(
                    &at.child(file_key),
                    fp,
                    format!("both {env_key:?} and {file_key:?} are given: keep exactly one"),
                );
                None
            }
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) if f.get(env_key).is_some() || f.get(file_key).is_some() => None,
            (None, None) => {
                self.error(
                    &at.child(env_key),
                    obj.range.start,
                    format!(
                        "missing {what}: set {env_key:?} (an environment variable name) or {file_key:?} \
                         (an absolute path)"
                    ),
                );
                None
            }
        }
    }

    /// An `http://` or `https://` URL with a host; the URL as written.
    fn http_url(&mut self, s: &str, at: &At, offset: usize) -> Option<String> {
        match reqwest::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => {
                Some(s.to_owned())
            }
            _ => {
                // The URL may hold a token: the message shows only what kind of thing was wrong.
                self.error(
                    at,
                    offset,
                    "not an http:// or https:// URL with a host; give the full URL, e.g. \"https://hooks.example/…\"",
                );
                None
            }
        }
    }

    /// `status`: `null` (none), or `{"kind", "api", "token_env"|"token_file", "repository"?}`.
    fn status_or_null(&mut self, v: &Value<'_>, at: &At) -> Option<Option<StatusDraft>> {
        if matches!(v, Value::NullKeyword(_)) {
            return Some(None);
        }
        let obj = self.object(
            v,
            at,
            "an object such as {\"kind\": \"forgejo\", \"api\": \"https://git.example/api/v1\", \"token_file\": \"/etc/kua/forge-token\"}, \
             or null to set no commit statuses",
        )?;
        let f = self.fields(obj, at, STATUS_KEYS);
        let forge = match f.get("kind") {
            None => {
                self.missing(obj, at, "kind", "name the forge: \"forgejo\", \"gitea\", \"github\" or \"gitlab\"");
                None
            }
            Some(kp) => {
                let kat = at.child("kind");
                match self.string(&kp.value, &kat, "\"forgejo\", \"gitea\", \"github\" or \"gitlab\"") {
                    Some("forgejo") => Some(Forge::Forgejo),
                    Some("gitea") => Some(Forge::Gitea),
                    Some("github") => Some(Forge::GitHub),
                    Some("gitlab") => Some(Forge::GitLab),
                    Some(other) => {
                        self.error(
                            &kat,
                            value_start(&kp.value),
                            format!("unknown forge {other:?}: \"forgejo\", \"gitea\", \"github\" or \"gitlab\""),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let api = match f.get("api") {
            None => {
                self.missing(
                    obj,
                    at,
                    "api",
                    "give the forge's API base URL, e.g. \"https://git.example/api/v1\", \"https://api.github.com\" or \"https://gitlab.example/api/v4\"",
                );
                None
            }
            Some(ap) => {
                let aat = at.child("api");
                self.string(&ap.value, &aat, "a string: the forge's API base URL")
                    .and_then(|s| self.http_url(s, &aat, value_start(&ap.value)))
                    .map(|u| u.trim_end_matches('/').to_owned())
            }
        };
        let token = self.secret_source(&f, obj, at, ("token_env", "token_file"), "the forge's API token");
        let repository = match f.get("repository") {
            None => Some(None),
            Some(rp) => {
                let rat = at.child("repository");
                let start = value_start(&rp.value);
                let gitlab = forge == Some(Forge::GitLab);
                self.string(&rp.value, &rat, "a string: the repository, \"owner/name\"").and_then(|s| {
                    let one_slash = s.matches('/').count() == 1;
                    let id = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                    if is_repository_path(s) && (gitlab || one_slash) || gitlab && id {
                        Some(Some(s.to_owned()))
                    } else {
                        let want = if gitlab {
                            "a GitLab project's path (\"group/name\", \"group/sub/name\") or numeric id"
                        } else {
                            "\"owner/name\""
                        };
                        self.error(
                            &rat,
                            start,
                            format!("{s:?} is not {want}: give the repository the commit statuses go to"),
                        );
                        None
                    }
                })
            }
        };
        Some(Some(StatusDraft { forge: forge?, api: api?, token: token?, repository: repository? }))
    }

    /// `notify`: `null` or a list of `{"kind": "webhook", "url", "format"?, "events"?}`.
    fn notify(&mut self, v: &Value<'_>, at: &At) -> Option<Vec<NotifyTarget>> {
        if matches!(v, Value::NullKeyword(_)) {
            return Some(Vec::new());
        }
        let example = "a list such as [{\"kind\": \"webhook\", \"url\": \"https://hooks.example/…\", \"format\": \"slack\"}], or null for none";
        let Value::Array(arr) = v else {
            self.wrong_type(v, at, example);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, e) in arr.elements.iter().enumerate() {
            match self.notify_target(e, &at.index(i)) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn notify_target(&mut self, v: &Value<'_>, at: &At) -> Option<NotifyTarget> {
        let obj =
            self.object(v, at, "an object such as {\"kind\": \"webhook\", \"url\": \"https://hooks.example/…\"}")?;
        let f = self.fields(obj, at, NOTIFY_KEYS);
        let kind = match f.get("kind") {
            None => {
                self.missing(obj, at, "kind", "say \"kind\": \"webhook\"");
                None
            }
            Some(kp) => match self.string(&kp.value, &at.child("kind"), "\"webhook\"") {
                Some("webhook") => Some(()),
                Some(other) => {
                    self.error(
                        &at.child("kind"),
                        value_start(&kp.value),
                        format!("unknown kind {other:?}: the only kind is \"webhook\""),
                    );
                    None
                }
                None => None,
            },
        };
        let url = match f.get("url") {
            None => {
                self.missing(obj, at, "url", "give the incoming webhook's URL");
                None
            }
            Some(up) => {
                let uat = at.child("url");
                self.string(&up.value, &uat, "a string: the webhook's URL")
                    .and_then(|s| self.http_url(s, &uat, value_start(&up.value)))
            }
        };
        let format = match f.get("format") {
            None => Some(NotifyFormat::Json),
            Some(fp) => {
                let fat = at.child("format");
                match self.string(&fp.value, &fat, "\"json\", \"slack\" or \"ntfy\"") {
                    Some("json") => Some(NotifyFormat::Json),
                    Some("slack") => Some(NotifyFormat::Slack),
                    Some("ntfy") => Some(NotifyFormat::Ntfy),
                    Some(other) => {
                        self.error(
                            &fat,
                            value_start(&fp.value),
                            format!("unknown format {other:?}: \"json\" (the deploy object), \"slack\" ({{\"text\": …}}: Slack, Mattermost, Rocket.Chat) or \"ntfy\""),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let events = match f.get("events") {
            None => Some(NotifyEvent::DEFAULT.to_vec()),
            Some(ep) => {
                let eat = at.child("events");
                let names: Vec<&str> = NotifyEvent::ALL.iter().map(|e| e.as_str()).collect();
                let items = self.string_list(
                    &ep.value,
                    &eat,
                    "a list of event names, e.g. [\"failed\", \"rolled_back\"]",
                    "a string: an event name",
                );
                items.and_then(|items| {
                    let mut events = Vec::new();
                    let mut ok = true;
                    for (name, iat, start) in items {
                        match NotifyEvent::ALL.iter().find(|e| e.as_str() == name) {
                            Some(e) if !events.contains(e) => events.push(*e),
                            Some(_) => {}
                            None => {
                                self.error(
                                    &iat,
                                    start,
                                    format!("unknown event {name:?}; the events are: {}", names.join(", ")),
                                );
                                ok = false;
                            }
                        }
                    }
                    ok.then_some(events)
                })
            }
        };
        kind?;
        Some(NotifyTarget { url: url?, format: format?, events: events? })
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

/// A Compose file is handed to `docker compose --file`: there `-` is standard input, not a file in
/// the checkout, and anything else starting with `-` would be read as an option.
fn check_compose_file(s: &str) -> Result<(), String> {
    check_relative(s).map_err(str::to_owned)?;
    if s.starts_with('-') {
        let read_as = if s == "-" { "standard input" } else { "an option" };
        return Err(format!(
            "starts with '-', so Compose would read it as {read_as}, not as a file in repo: list the Compose \
             files by path, e.g. \"docker-compose.yml\" (a file really named {s:?} is \"./{s}\")"
        ));
    }
    Ok(())
}

/// `owner/name`, or for a forge with nested groups (GitLab) `group/sub/name`: two parts or more,
/// each made of letters, digits, `-`, `_` and `.`, none empty, `.` or `..`.
fn is_repository_path(s: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    s.contains('/') && s.split('/').all(part_ok)
}

fn is_env_name(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
