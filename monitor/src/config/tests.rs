//! Parsing, defaults and validation of the daemon configuration.
use super::*;
use std::path::PathBuf;

fn origin() -> &'static Path {
    Path::new("/etc/confgate/config.toml")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, origin())
}

fn invalid_field(text: &str) -> (String, Option<(usize, usize)>) {
    match parse(text) {
        Err(ConfigError::Invalid {
            field, location, ..
        }) => (field, location),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
    assert_eq!(Config::default().detect, default_detect_rules());
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
}

#[test]
fn deploy_file_is_exactly_the_defaults() {
    let text = include_str!("../../../deploy/config.toml");
    assert_eq!(
        Config::parse(text, Path::new("deploy/config.toml")).unwrap(),
        Config::default()
    );
}

#[test]
fn serialized_defaults_parse_back() {
    let text = toml::to_string(&Config::default()).unwrap();
    assert_eq!(parse(&text).unwrap(), Config::default());
}

#[test]
fn partial_sections_keep_other_defaults() {
    let c = parse("[daemon]\nsocket_mode = 0o660\nadmin_group = \"confgate\"\n").unwrap();
    assert_eq!(c.daemon.socket_mode, 0o660);
    assert_eq!(c.daemon.admin_group.as_deref(), Some("confgate"));
    assert_eq!(c.daemon.socket, DaemonSection::default().socket);
    assert_eq!(c.watch, WatchSection::default());
    assert_eq!(c.detect, default_detect_rules());
}

#[test]
fn detect_in_file_replaces_the_defaults() {
    let c = parse("[[detect]]\nagent = \"mine\"\ncomm = [\"mine\"]\n").unwrap();
    assert_eq!(c.detect.len(), 1);
    assert_eq!(c.detect[0].agent, "mine");
    assert!(c.detect[0].exe.is_empty());
}

#[test]
fn stdout_modes() {
    for (text, mode) in [
        ("auto", StdoutMode::Auto),
        ("human", StdoutMode::Human),
        ("json", StdoutMode::Json),
        ("off", StdoutMode::Off),
    ] {
        let c = parse(&format!("[output]\nstdout = \"{text}\"\n")).unwrap();
        assert_eq!(c.output.stdout, mode);
    }
}

#[test]
fn type_error_has_line_and_column() {
    let text = "[kernel]\n\npath_filter = \"yes\"\n";
    match parse(text) {
        Err(
            e @ ConfigError::Parse {
                line: 3,
                column: 15,
                ..
            },
        ) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with("/etc/confgate/config.toml:3:15: invalid type"),
                "{shown}"
            );
            assert!(!shown.contains('\n'), "{shown}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_key_is_an_error_with_position() {
    match parse("[watch]\npaths = []\nexclude_paths = []\n") {
        Err(ConfigError::Parse {
            line: 3,
            column: 1,
            message,
            ..
        }) => {
            assert!(
                message.contains("unknown field `exclude_paths`"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse("[nope]\n"),
        Err(ConfigError::Parse { line: 1, .. })
    ));
    assert!(matches!(
        parse("[[detect]]\nagent = \"a\"\ncommm = [\"a\"]\n"),
        Err(ConfigError::Parse { line: 3, .. })
    ));
}

#[test]
fn syntax_error_has_position() {
    match parse("[daemon]\nsocket = \"/run/x.sock\n") {
        Err(e @ ConfigError::Parse { line: 2, .. }) => {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_stdout_mode() {
    match parse("[output]\nstdout = \"color\"\n") {
        Err(ConfigError::Parse {
            line: 2,
            column: 10,
            message,
            ..
        }) => {
            assert!(message.contains("unknown variant `color`"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn relative_watch_path_is_located() {
    let text = "[watch]\npaths = [\n  \"/etc\",\n  \"/var/spool/cron\",\n  \"etc/foo\",\n]\n";
    let err = parse(text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/confgate/config.toml:5:3: watch.paths[2]: etc/foo is not an absolute path"
    );
}

#[test]
fn dotdot_and_long_paths_are_rejected() {
    let (field, _) = invalid_field("[watch]\npaths = [\"/etc/../root\"]\n");
    assert_eq!(field, "watch.paths[0]");
    let long = format!("/{}", "a".repeat(254));
    let (field, _) = invalid_field(&format!("[watch]\npaths = [\"{long}\"]\n"));
    assert_eq!(field, "watch.paths[0]");
    let ok = format!("/{}", "a".repeat(253));
    parse(&format!("[watch]\npaths = [\"{ok}\"]\n")).unwrap();
}

#[test]
fn watching_the_root_is_an_error() {
    for root in ["/", "//"] {
        let (field, loc) = invalid_field(&format!("[watch]\npaths = [\"/etc\", \"{root}\"]\n"));
        assert_eq!((field.as_str(), loc), ("watch.paths[1]", Some((2, 18))));
    }
}

#[test]
fn remote_mode_needs_a_client_section() {
    let (field, loc) = invalid_field("[approval]\nmode = \"remote\"\n");
    assert_eq!((field.as_str(), loc), ("approval.mode", Some((2, 8))));
}

#[test]
fn an_empty_rule_list_means_no_rules() {
    let c = parse("[gate]\nrule = []\n").unwrap();
    assert!(c.gate.rules.is_empty());
    let p = crate::policy::Policy::compile(&c.gate, &crate::policy::ProtectedPaths::new()).unwrap();
    assert_eq!(p.rules().count(), 0);
    assert_eq!(
        parse("").unwrap().gate.rules,
        crate::policy::default_gate_rules()
    );
}

#[test]
fn skip_programs_names_programs_of_the_object_but_not_process_tracking() {
    let cfg =
        parse("[kernel]\nskip_programs = [\"sys_enter_close\", \"sys_enter_dup\"]\n").unwrap();
    assert_eq!(
        cfg.kernel.skip_programs,
        ["sys_enter_close", "sys_enter_dup"]
    );
    let (field, _) = invalid_field("[kernel]\nskip_programs = [\"sys_enter_nope\"]\n");
    assert_eq!(field, "kernel.skip_programs[0]");
    let (field, _) =
        invalid_field("[kernel]\nskip_programs = [\"sys_enter_write\", \"sched_process_fork\"]\n");
    assert_eq!(field, "kernel.skip_programs[1]");
}

#[test]
fn ringbuf_must_be_a_power_of_two() {
    for bad in ["12345", "2048", "0"] {
        let (field, loc) = invalid_field(&format!("[kernel]\nringbuf_bytes = {bad}\n"));
        assert_eq!(field, "kernel.ringbuf_bytes");
        assert_eq!(loc, Some((2, 17)));
    }
    parse("[kernel]\nringbuf_bytes = 4096\n").unwrap();
    parse("[kernel]\nringbuf_bytes = 0x1000000\n").unwrap();
    assert!(matches!(
        parse("[kernel]\nringbuf_bytes = -1\n"),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn daemon_checks() {
    assert_eq!(
        invalid_field("[daemon]\nsocket_mode = 0o4777\n").0,
        "daemon.socket_mode"
    );
    assert_eq!(
        invalid_field("[daemon]\nsocket = \"run/x\"\n").0,
        "daemon.socket"
    );
    let long = format!("/{}", "s".repeat(120));
    assert_eq!(
        invalid_field(&format!("[daemon]\nsocket = \"{long}\"\n")).0,
        "daemon.socket"
    );
    assert_eq!(
        invalid_field("[daemon]\nadmin_group = \"\"\n").0,
        "daemon.admin_group"
    );
    assert_eq!(
        invalid_field("[daemon]\nstate_dir = \"var\"\n").0,
        "daemon.state_dir"
    );
    assert_eq!(
        invalid_field("[output]\nevents_file = \"x.ndjson\"\n").0,
        "output.events_file"
    );
    assert_eq!(
        invalid_field("[correlation]\nwindow_ms = 0\n").0,
        "correlation.window_ms"
    );
}

#[test]
fn approval_client_takes_one_endpoint_or_several() {
    let tls = "ca = \"/etc/confgate/ca.pem\"\ncert = \"/etc/confgate/host.pem\"\nkey = \"/etc/confgate/host.key\"\n";
    let c = parse(&format!(
        "[approval]\nmode = \"remote\"\n[approval.client]\nendpoint = [\"https://a:7443\", \"https://b:7443\"]\n{tls}"
    ))
    .unwrap();
    let client = &c.approval.client;
    assert_eq!(client.endpoint, "https://a:7443");
    assert_eq!(client.more_endpoints, ["https://b:7443"]);
    assert_eq!(client.endpoint_count(), 2);
    assert_eq!(client.nth_endpoint(1).endpoint, "https://b:7443");
    assert_eq!(client.nth_endpoint(2).endpoint, "https://a:7443");
    assert!(client.nth_endpoint(1).more_endpoints.is_empty());
    assert_eq!(client.nth_endpoint(1).ca, client.ca);
    // Written back as a list; one endpoint as a string.
    let text = toml::to_string(client).unwrap();
    assert!(
        text.contains("endpoint = [\"https://a:7443\", \"https://b:7443\"]"),
        "{text}"
    );
    let one = parse(&format!(
        "[approval.client]\nendpoint = [\"https://a:7443\"]\n{tls}"
    ))
    .unwrap();
    assert!(one.approval.client.more_endpoints.is_empty());
    assert!(
        toml::to_string(&one.approval.client)
            .unwrap()
            .contains("endpoint = \"https://a:7443\"")
    );
    // Every endpoint is checked; an empty list, a repeated or a bad one is refused.
    for bad in [
        "[]",
        "[\"https://a:7443\", \"https://a:7443\"]",
        "[\"https://a:7443\", \"http://10.0.0.5:80\"]",
    ] {
        let (field, _) = invalid_field(&format!("[approval.client]\nendpoint = {bad}\n{tls}"));
        assert!(field.starts_with("approval.client"), "{bad}: {field}");
    }
    assert!(
        parse(&format!(
            "[approval.client]\nendpoint = [\"https://a:7443\", 5]\n{tls}"
        ))
        .is_err()
    );
}

#[test]
fn approval_section() {
    let c = parse("").unwrap();
    assert_eq!(c.approval.mode, ApprovalMode::Local);
    assert_eq!(
        c.approval.client_config().endpoint,
        "unix:/run/confgate/approver.sock"
    );
    let c = parse(
        "[approval]\nmode = \"remote\"\n[approval.client]\nendpoint = \"https://appr.example:7443\"\n\
         ca = \"/etc/confgate/ca.pem\"\ncert = \"/etc/confgate/host.pem\"\nkey = \"/etc/confgate/host.key\"\n",
    )
    .unwrap();
    assert_eq!(c.approval.mode, ApprovalMode::Remote);
    assert_eq!(c.approval.client_config(), c.approval.client);
    assert_eq!(c.approval.client.endpoint, "https://appr.example:7443");

    let (field, loc) = invalid_field(
        "[approval]\nmode = \"remote\"\n[approval.client]\nendpoint = \"http://10.0.0.5:80\"\nallow_plaintext = true\n",
    );
    assert_eq!(
        (field.as_str(), loc),
        ("approval.client.endpoint", Some((4, 12)))
    );
    assert_eq!(
        invalid_field("[approval.client]\nendpoint = \"http://127.0.0.1:80\"\n").0,
        "approval.client.endpoint"
    );
    parse("[approval.client]\nendpoint = \"http://127.0.0.1:80\"\nallow_plaintext = true\n")
        .unwrap();
    assert_eq!(
        invalid_field("[approval.client]\nendpoint = \"https://a:1\"\n").0,
        "approval.client.ca"
    );
    assert_eq!(
        invalid_field("[approval]\nlocal_socket = \"approver.sock\"\n").0,
        "approval.local_socket"
    );
    assert_eq!(
        invalid_field("[approval]\nlocal_config = \"approver.toml\"\n").0,
        "approval.local_config"
    );
    assert!(matches!(
        parse("[approval]\nmode = \"cloud\"\n"),
        Err(ConfigError::Parse { line: 2, .. })
    ));
    assert!(matches!(
        parse("[approval.client]\nendpoint = \"unix:/a\"\nca_file = \"/x\"\n"),
        Err(ConfigError::Parse { line: 3, .. })
    ));
}

#[test]
fn watch_glob_checks() {
    let (field, loc) = invalid_field("[watch]\nexclude = [\"/etc/[ab\"]\n");
    assert_eq!((field.as_str(), loc), ("watch.exclude[0]", Some((2, 12))));
    assert_eq!(
        invalid_field("[watch]\nexclude = [\"*.swp\"]\n").0,
        "watch.exclude[0]"
    );
    parse("[watch]\nexclude = [\"**/*.swp\", \"/etc/ssl/private\"]\n").unwrap();
    assert_eq!(
        invalid_field("[watch]\nproject_globs = [\"a/*.toml\"]\n").0,
        "watch.project_globs[0]"
    );
    assert_eq!(
        invalid_field("[watch]\nproject_globs = [\"{a\"]\n").0,
        "watch.project_globs[0]"
    );
    assert_eq!(
        invalid_field("[watch]\nproject_roots = [\"/home/*/src\"]\n").0,
        "watch.project_roots[0]"
    );
    assert_eq!(
        invalid_field("[watch]\nproject_roots = [\"home\"]\n").0,
        "watch.project_roots[0]"
    );
    assert_eq!(
        invalid_field("[watch]\nproject_roots = [\"/\"]\n").0,
        "watch.project_roots[0]"
    );
    parse("[watch]\nproject_roots = [\"/home/*\", \"/srv/proj-?\", \"/data/\"]\n").unwrap();
}

#[test]
fn split_project_roots() {
    assert_eq!(split_project_root("/home/*"), Ok(("/home", Some("*"))));
    assert_eq!(split_project_root("/srv"), Ok(("/srv", None)));
    assert_eq!(split_project_root("/srv/"), Ok(("/srv", None)));
    assert_eq!(split_project_root("/*"), Ok(("/", Some("*"))));
    assert!(split_project_root("/a/*/b").is_err());
    assert!(split_project_root("/a/../b").is_err());
}

#[test]
fn rule_checks() {
    let (field, loc) =
        invalid_field("[[detect]]\nagent = \"a\"\ncomm = [\"a\"]\n\n[[detect]]\nagent = \"b\"\n");
    assert_eq!(field, "detect[1]");
    assert_eq!(loc.map(|l| l.0), Some(5));
    assert_eq!(
        invalid_field("[[detect]]\ncomm = [\"a\"]\n").0,
        "detect[0].agent"
    );
    let (field, loc) =
        invalid_field("[[detect]]\nagent = \"a\"\ncomm = [\"ok\", \"a-very-long-name\"]\n");
    assert_eq!((field.as_str(), loc), ("detect[0].comm[1]", Some((3, 15))));
    assert_eq!(
        invalid_field("[[detect]]\nagent = \"a\"\nenv = [\"A B=1\"]\n").0,
        "detect[0].env[0]"
    );
    assert_eq!(
        invalid_field("[[detect]]\nagent = \"a\"\nenv = [\"=1\"]\n").0,
        "detect[0].env[0]"
    );
    assert_eq!(
        invalid_field("[[detect]]\nagent = \"a\"\nexe = [\"[\"]\n").0,
        "detect[0].exe[0]"
    );
    // A detected session's scope is checked as `confgate run --scope`.
    for bad in [
        "[\"relative/**\"]",
        "[\"/srv/../etc/**\"]",
        "[\"/srv/app/\"]",
    ] {
        assert_eq!(
            invalid_field(&format!(
                "[[detect]]\nagent = \"a\"\ncomm = [\"a\"]\nscope = {bad}\n"
            ))
            .0,
            "detect[0].scope",
            "{bad}"
        );
    }
    assert_eq!(
        invalid_field("[[detect]]\nagent = \"a\"\ncgroup = [\"system.slice\"]\n").0,
        "detect[0].cgroup[0]"
    );
    parse("[[detect]]\nagent = \"a\"\nenv = [\"X_1=a=b\"]\ncgroup = [\"/system.slice/agent-*.service\"]\n")
        .unwrap();
}

#[test]
fn parse_all_reports_every_problem() {
    let text = "[kernel]\nringbuf_bytes = 3\n[watch]\npaths = [\"a\", \"/b\", \"c\"]\n";
    let errors = Config::parse_all(text, origin()).unwrap_err();
    let fields: Vec<_> = errors
        .iter()
        .map(|e| match e {
            ConfigError::Invalid { field, .. } => field.as_str(),
            _ => "?",
        })
        .collect();
    assert_eq!(
        fields,
        ["kernel.ringbuf_bytes", "watch.paths[0]", "watch.paths[2]"]
    );
}

#[test]
fn validate_without_a_file() {
    let mut c = Config::default();
    c.watch.paths.push(PathBuf::from("relative"));
    let e = c.validate().unwrap_err();
    assert_eq!(
        e.to_string(),
        "watch.paths[11]: relative is not an absolute path"
    );
}

#[test]
fn load_and_load_or_default() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    assert_eq!(
        Config::load_or_default(&missing, false).unwrap(),
        Config::default()
    );
    assert!(matches!(
        Config::load_or_default(&missing, true),
        Err(ConfigError::Io { cause: source, .. }) if source.kind() == io::ErrorKind::NotFound
    ));

    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[correlation]\nwindow_ms = 500\n").unwrap();
    assert_eq!(Config::load(&file).unwrap().correlation.window_ms, 500);
    assert_eq!(
        Config::load_or_default(&file, false)
            .unwrap()
            .correlation
            .window_ms,
        500
    );

    std::fs::write(&file, b"# ok\n[daemon]\nsocket = \"/run/\xff\"\n").unwrap();
    match Config::load(&file) {
        Err(ConfigError::Parse {
            line: 3,
            column: 16,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // A directory is an I/O error even at the default path.
    assert!(matches!(
        Config::load_or_default(dir.path(), false),
        Err(ConfigError::Io { .. })
    ));
}

#[test]
fn gate_fanotify_mode_and_watchdog() {
    use crate::policy::FanotifyMode;
    let d = parse("").unwrap();
    assert_eq!(d.gate.fanotify, FanotifyMode::Detected);
    assert_eq!(d.gate.watchdog.0, std::time::Duration::from_secs(2));
    for (text, mode) in [
        ("off", FanotifyMode::Off),
        ("detected", FanotifyMode::Detected),
        ("always", FanotifyMode::Always),
    ] {
        let c = parse(&format!("[gate]\nfanotify = \"{text}\"\n")).unwrap();
        assert_eq!(c.gate.fanotify, mode);
        assert_eq!(mode.to_string(), text);
    }
    match parse("[gate]\nfanotify = \"sometimes\"\n") {
        Err(e @ ConfigError::Parse { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("sometimes") && msg.contains("detected"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    for bad in ["\"10ms\"", "\"2m\""] {
        let (field, loc) = invalid_field(&format!("[gate]\nwatchdog = {bad}\n"));
        assert_eq!(field, "gate.watchdog");
        assert_eq!(loc, Some((2, 12)));
    }
    let c = parse("[gate]\nwatchdog = \"500ms\"\n").unwrap();
    assert_eq!(c.gate.watchdog.0, std::time::Duration::from_millis(500));
}
