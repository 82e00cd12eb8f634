//! Registry parsing and validation, checked against the spec's examples and every kind of mistake.

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
    assert_eq!(a.compose_files.as_deref(), Some(&["docker-compose.yml".to_owned()][..]));
    assert_eq!(a.project.as_ref().unwrap().as_str(), "hello");
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
    assert_eq!(a.compose_files, None, "Compose discovers the files itself");
    assert_eq!(a.project, None, "Compose resolves the project itself");
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
fn an_app_name_that_is_not_a_project_name_is_fine_and_a_bad_project_is_refused() {
    let r = parse(r#"{"apps": {"Hello.World": {"repo": "/a", "services": ["web"]}}}"#).unwrap();
    assert_eq!(r.apps.values().next().unwrap().project, None);
    let r = parse(r#"{"apps": {"Hello.World": {"repo": "/a", "services": ["web"], "project": "hw"}}}"#).unwrap();
    assert_eq!(r.apps.values().next().unwrap().project.as_ref().unwrap().as_str(), "hw");
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

    let e =
        only_error(&one_app(r#""migrations": {"paths": ["m"], "policy": "run", "service": "db", "command": ["x"]}"#));
    assert_eq!(e.key, "apps.hello.migrations.service");
    assert!(e.message.contains("not one of the app's services (web)"), "{}", e.message);

    let errs = errors(&one_app(r#""migrations": {"paths": ["m"], "policy": "run"}"#));
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["apps.hello.migrations.service", "apps.hello.migrations.command"]);

    let e = only_error(&one_app(r#""migrations": {"paths": ["m"], "policy": "run", "service": "web", "command": []}"#));
    assert!(e.message.contains("the list is empty"), "{}", e.message);
    let e = only_error(&one_app(
        r#""migrations": {"paths": ["m"], "policy": "run", "service": "web", "command": "./migrate up"}"#,
    ));
    assert!(e.message.contains("not a shell line"), "{}", e.message);
}

#[test]
fn service_or_command_with_another_policy_is_an_error() {
    let errs =
        errors(&one_app(r#""migrations": {"paths": ["m"], "policy": "block", "service": "web", "command": ["x"]}"#));
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
    assert_eq!(hello(&r).compose_files.as_deref().unwrap(), ["compose.yml", "./deploy/prod.yml"]);
}

#[test]
fn a_compose_file_that_compose_would_read_as_stdin_or_an_option_is_refused() {
    let text = one_app(r#""compose_files": ["-", "-f", "ok.yml", "--file=x.yml"]"#);
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    for (e, (i, bad, read_as)) in
        errs.iter().zip([(0, "-", "standard input"), (1, "-f", "an option"), (3, "--file=x.yml", "an option")])
    {
        assert_eq!(e.app.as_deref(), Some("hello"));
        assert_eq!(e.key, format!("apps.hello.compose_files[{i}]"));
        assert_eq!((e.line, e.column), (1, text.find(&format!("\"{bad}\"")).unwrap() + 1), "{e}");
        assert!(e.message.contains(read_as), "{e}");
        assert!(e.message.contains(&format!("\"./{bad}\"")), "says how to name such a file: {e}");
    }
    // Written as a path, a file whose name starts with '-' is fine.
    let r = parse(&one_app(r#""compose_files": ["./-", "deploy/-f.yml"]"#)).unwrap();
    assert_eq!(hello(&r).compose_files.as_deref().unwrap(), ["./-", "deploy/-f.yml"]);
    // Migration paths never reach Compose: the rule is the Compose files' own.
    assert!(parse(&one_app(r#""migrations": {"paths": ["-sql"], "policy": "block"}"#)).is_ok());
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
        let e = only_error(&one_app(&format!(r#""webhook": {{"repository": "kua/hello", "secret_env": "{bad}"}}"#)));
        assert_eq!(e.key, "apps.hello.webhook.secret_env", "{bad}");
        assert!(e.message.contains("not an environment variable name"), "{}", e.message);
    }
    parse(&one_app(r#""webhook": {"repository": "kua/hello", "secret_env": "_x9"}"#)).unwrap();
}

#[test]
fn webhook_repository_must_be_owner_slash_name_or_a_nested_group_path() {
    for bad in [
        "kua",
        "kua/",
        "/hello",
        "kua/..",
        "a b/c",
        "https://forge/kua/hello",
        "a//c",
        "a/b/",
        "/a/b/c",
        "a/../c",
        "a/./c",
        "a/b c/d",
        "",
    ] {
        let e = only_error(&one_app(&format!(r#""webhook": {{"repository": "{bad}", "secret_env": "S"}}"#)));
        assert_eq!(e.key, "apps.hello.webhook.repository", "{bad}");
        assert!(e.message.contains("e.g. \"kua/hello\""), "{}", e.message);
    }
    for good in ["Kua-Org/hello.world_2", "kua/hello/x", "group/sub/app", "a/b/c/d/e"] {
        let r = parse(&one_app(&format!(r#""webhook": {{"repository": "{good}", "secret_env": "S"}}"#))).unwrap();
        assert_eq!(hello(&r).webhook.as_ref().unwrap().repository, good);
    }
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
fn two_apps_without_a_project_on_one_checkout_conflict() {
    let e = only_error(
        r#"{"apps": {"shop": {"repo": "/a", "services": ["web"]}, "shop2": {"repo": "/a", "services": ["api"]}}}"#,
    );
    assert_eq!(e.app.as_deref(), Some("shop2"));
    assert!(e.message.contains("of the checkout /a"), "{}", e.message);
}

#[test]
fn self_must_name_an_app() {
    let r =
        parse(r#"{"apps": {"kua-deploy": {"repo": "/srv/kua", "services": ["kua"]}}, "self": "kua-deploy"}"#).unwrap();
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

#[test]
fn the_self_app_must_be_local_and_list_only_its_own_service() {
    let text = r#"{"self": "kua", "apps": {"kua": {"repo": "/srv/kua", "services": ["kua", "worker"]}}}"#;
    let errors = Registry::parse(text, Path::new("r.json")).unwrap_err().to_string();
    assert!(errors.contains("only kua-deploy's own service"), "{errors}");
    let text = r#"{"self": "kua", "apps": {"kua": {"repo": "/srv/kua", "host": "ssh://d@h", "services": ["kua"]}}}"#;
    let errors = Registry::parse(text, Path::new("r.json")).unwrap_err().to_string();
    assert!(errors.contains("\"local\""), "{errors}");
    let ok = r#"{"self": "kua", "apps": {"kua": {"repo": "/srv/kua", "services": ["kua"]}}}"#;
    assert!(Registry::parse(ok, Path::new("r.json")).is_ok());
}

#[test]
fn the_top_level_secrets_command_is_every_apps_unless_an_app_sets_its_own_or_null() {
    let text = r#"{
      "secrets": {"command": ["kua-vault", "export", "{app}"]},
      "apps": {
        "hello": {"repo": "/srv/apps/hello", "services": ["web"]},
        "own": {"repo": "/srv/apps/own", "services": ["web"], "secrets": {"command": ["/usr/local/bin/own-vault"], "format": "json", "timeout_s": 5}},
        "none": {"repo": "/srv/apps/none", "services": ["web"], "secrets": null}
      }
    }"#;
    let r = parse(text).unwrap();
    let app = |n: &str| r.app(&AppName::parse(n).unwrap()).unwrap().secrets.clone();
    let hello = app("hello").unwrap();
    assert_eq!((hello.format, hello.timeout_s), (SecretsFormat::Dotenv, 30));
    assert_eq!(hello.argv(&AppName::parse("hello").unwrap()), ["kua-vault", "export", "hello"]);
    let own = app("own").unwrap();
    assert_eq!(
        (own.command.as_slice(), own.format, own.timeout_s),
        (&["/usr/local/bin/own-vault".to_owned()][..], SecretsFormat::Json, 5)
    );
    assert!(app("none").is_none(), "null turns the default off");
    assert!(hello_without_secrets());
}

fn hello_without_secrets() -> bool {
    hello(&parse(&one_app("")).unwrap()).secrets.is_none()
}

#[test]
fn a_bad_secrets_entry_is_refused_with_its_key_and_what_to_write() {
    for (extra, key, says) in [
        (r#""secrets": {"command": []}"#, "secrets.command", "the list is empty"),
        (r#""secrets": {"command": ["kua-vault"], "format": "yaml"}"#, "secrets.format", "unknown format"),
        (r#""secrets": {"command": ["kua-vault"], "timeout_s": 0}"#, "secrets.timeout_s", ""),
        (r#""secrets": {"format": "json"}"#, "secrets", "command"),
        (r#""secrets": {"command": "kua-vault export"}"#, "secrets.command", "list"),
        (r#""secrets": {"command": ["kua-vault"], "shell": true}"#, "secrets.shell", "unknown key"),
    ] {
        let e = only_error(&one_app(extra));
        assert!(e.to_string().contains(key), "{extra}: {e}");
        assert!(e.to_string().contains(says), "{extra}: {e}");
    }
}

#[test]
fn status_and_notify_at_the_top_are_every_apps_unless_it_says_otherwise() {
    let text = r#"{
  "public_url": "https://deploy.example/",
  "status": {"kind": "gitea", "api": "https://git.example/api/v1/", "token_env": "FORGE_TOKEN"},
  "notify": [{"kind": "webhook", "url": "https://hooks.example/x?token=t"}],
  "apps": {
    "hello": {"repo": "/srv/a", "services": ["web"], "webhook": {"repository": "kua/hello", "secret_env": "S"}},
    "quiet": {"repo": "/srv/b", "services": ["web"], "status": null, "notify": null},
    "other": {"repo": "/srv/c", "services": ["web"], "status": {"kind": "gitlab", "api": "https://gl.example/api/v4", "token_file": "/etc/t", "repository": "grp/sub/other"},
              "notify": [{"kind": "webhook", "url": "https://ntfy.example/t", "format": "ntfy", "events": ["failed"]}]}
  }
}"#;
    let r = parse(text).unwrap();
    assert_eq!(r.public_url.as_deref(), Some("https://deploy.example"));
    let hello = &r.apps[&AppName::parse("hello").unwrap()];
    let status = hello.status.as_ref().unwrap();
    assert_eq!(
        (status.forge, status.api.as_str(), status.repository.as_str()),
        (Forge::Gitea, "https://git.example/api/v1", "kua/hello")
    );
    assert_eq!(hello.notify.len(), 1);
    assert_eq!(hello.notify[0].format, NotifyFormat::Json);
    assert_eq!(hello.notify[0].events, NotifyEvent::DEFAULT.to_vec());
    let quiet = &r.apps[&AppName::parse("quiet").unwrap()];
    assert!(quiet.status.is_none() && quiet.notify.is_empty());
    let other = &r.apps[&AppName::parse("other").unwrap()];
    assert_eq!(other.status.as_ref().unwrap().repository, "grp/sub/other");
    assert_eq!(other.notify[0].events, vec![NotifyEvent::Failed]);
}

#[test]
fn a_status_with_no_repository_and_no_webhook_is_an_error_saying_what_to_add() {
    let e = only_error(&one_app(r#""status": {"kind": "github", "api": "https://api.github.com", "token_env": "T"}"#));
    assert_eq!(e.key, "apps.hello.status");
    assert!(e.message.contains("add \"repository\""), "{}", e.message);
}

#[test]
fn a_bad_forge_repository_url_or_event_is_an_error_at_its_key() {
    let e = only_error(&one_app(
        r#""status": {"kind": "github", "api": "https://api.github.com", "token_env": "T", "repository": "a/b/c"}"#,
    ));
    assert_eq!(e.key, "apps.hello.status.repository");
    let e = only_error(&one_app(
        r#""status": {"kind": "bitbucket", "api": "https://x", "token_env": "T", "repository": "a/b"}"#,
    ));
    assert_eq!(e.key, "apps.hello.status.kind");
    let e = only_error(&one_app(r#""notify": [{"kind": "webhook", "url": "ftp://secret@x/"}]"#));
    assert_eq!(e.key, "apps.hello.notify[0].url");
    assert!(!e.message.contains("secret"), "a URL may hold a token: {}", e.message);
    let e = only_error(&one_app(r#""notify": [{"kind": "webhook", "url": "https://x/", "events": ["exploded"]}]"#));
    assert_eq!(e.key, "apps.hello.notify[0].events[0]");
    assert!(e.message.contains("rolled_back"), "{}", e.message);
    let e = only_error(&one_app(r#""status": {"kind": "gitea", "api": "https://x", "repository": "a/b"}"#));
    assert!(e.message.contains("token_env"), "{}", e.message);
}

#[test]
fn a_gitlab_project_may_be_named_by_its_numeric_id() {
    let r = parse(&one_app(
        r#""status": {"kind": "gitlab", "api": "https://gl.example/api/v4", "token_env": "T", "repository": "4211"}"#,
    ))
    .unwrap();
    assert_eq!(r.apps.values().next().unwrap().status.as_ref().unwrap().repository, "4211");
}

#[test]
fn without_limits_two_deploys_run_per_host_and_eight_in_all() {
    let r = parse(&one_app("")).unwrap();
    assert_eq!(r.limits, DeployLimits { deploys: 8, deploys_per_host: 2, per_host: BTreeMap::new() });
    assert_eq!(r.limits.for_host(&HostSpec::Local), 2);
}

#[test]
fn limits_and_a_hosts_max_deploys_set_how_many_deploys_run_at_once() {
    let text = r#"{"limits": {"deploys": 5, "deploys_per_host": 3},
  "hosts": {"bruno": {"ssh": "deploy@bruno.example", "max_deploys": 1}, "edge": {"ssh": "ops@edge"}},
  "apps": {"hello": {"host": "bruno", "repo": "/srv/apps/hello", "services": ["web"]}}}"#;
    let r = parse(text).unwrap();
    assert_eq!((r.limits.deploys, r.limits.deploys_per_host), (5, 3));
    assert_eq!(r.limits.for_host(&hello(&r).host), 1, "bruno's own limit");
    assert_eq!(r.limits.for_host(&HostSpec::Ssh(r.hosts["edge"].clone())), 3, "edge takes deploys_per_host");
    assert_eq!(r.limits.for_host(&HostSpec::Local), 3);
}

#[test]
fn a_limit_of_zero_a_negative_or_fractional_one_or_an_unknown_limits_key_is_an_error_naming_the_key() {
    let text = r#"{"limits": {"deploys": 0, "deploys_per_host": -1, "builds": 2},
  "hosts": {"bruno": {"ssh": "deploy@bruno.example", "max_deploys": 1.5}, "edge": {"ssh": "a@b", "max_deploys": "2"}},
  "apps": {"hello": {"repo": "/srv/apps/hello", "services": ["web"]}}}"#;
    let errs = errors(text);
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "limits.deploys",
            "limits.deploys_per_host",
            "limits.builds",
            "hosts.bruno.max_deploys",
            "hosts.edge.max_deploys"
        ]
    );
    assert!(errs[0].message.contains("found 0, which would never start a deploy"), "{}", errs[0].message);
    assert!(errs[1].message.contains("a whole number from 1 to 1000"), "{}", errs[1].message);
    assert!(errs[1].message.contains("found -1"), "{}", errs[1].message);
    assert!(
        errs[2].message.contains("unknown key; the keys allowed here are: deploys, deploys_per_host"),
        "{}",
        errs[2].message
    );
    assert!(errs[3].message.contains("on this host, found 1.5"), "{}", errs[3].message);
    assert!(errs[4].message.contains("found a string"), "{}", errs[4].message);
    assert_eq!((errs[0].line, errs[0].column), (1, 24), "the position of the value");
    assert_eq!(errs[3].line, 2);
}

#[test]
fn limits_that_are_not_an_object_are_an_error() {
    let e = only_error(r#"{"limits": 4, "apps": {"hello": {"repo": "/srv/apps/hello", "services": ["web"]}}}"#);
    assert_eq!(e.key, "limits");
    assert!(
        e.message.contains("expected an object such as {\"deploys\": 8, \"deploys_per_host\": 2}"),
        "{}",
        e.message
    );
}
