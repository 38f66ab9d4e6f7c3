use super::*;

#[test]
fn tokens_are_single_valid_subject_tokens() {
    assert_eq!(token("web-01"), "web-01");
    assert_eq!(token("a.b*c>d e\nf"), "a_b_c_d_e_f");
    assert_eq!(token("hôte"), "h_te");
    assert_eq!(token(""), "_");
    assert_eq!(token(&"x".repeat(100)).len(), 64);
    assert!(is_subject(&format!(
        "confgate.events.{}.{}",
        token("a.b"),
        token("*")
    )));
}

#[test]
fn settings_are_checked_with_clear_messages() {
    let mut c = NatsConfig::with_names("confgate.events", "CONFGATE_EVENTS");
    assert!(
        c.problems("output.nats").is_empty(),
        "off: nothing to check"
    );
    c.servers = vec!["nats://127.0.0.1:4222".into()];
    assert!(c.problems("output.nats").is_empty());
    c.subject_prefix = "confgate.>".into();
    c.stream = "has.dot".into();
    c.cert = Some("/etc/c.pem".into());
    c.creds = Some("relative.creds".into());
    c.buffer_max_bytes = 10;
    let p: Vec<String> = c
        .problems("output.nats")
        .into_iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect();
    let p = p.join("\n");
    for want in [
        "output.nats.subject_prefix",
        "output.nats.stream",
        "output.nats: `cert` and `key` go together",
        "output.nats.creds: relative.creds must be an absolute path",
        "output.nats.buffer_max_bytes",
    ] {
        assert!(p.contains(want), "{want} missing in:\n{p}");
    }
}

#[test]
fn the_approval_services_section_has_its_own_names() {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(deserialize_with = "approvals_section")]
        nats: NatsConfig,
    }
    let f: File = toml::from_str("[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n").expect("parse");
    assert_eq!(f.nats.subject_prefix, "confgate.approvals");
    assert_eq!(f.nats.stream, "CONFGATE_APPROVALS");
    let f: File = toml::from_str("[nats]\nsubject_prefix = \"x.y\"\n").expect("parse");
    assert_eq!(f.nats.subject_prefix, "x.y");
    let e = toml::from_str::<File>("[nats]\nserver = []\n")
        .err()
        .expect("unknown key");
    assert!(e.to_string().contains("unknown field `server`"), "{e}");
}
