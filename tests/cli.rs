//! The command line as a user meets it: the README's first command, config errors, exit codes.

mod support;

use std::fs;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_logferry");

/// Runs the binary from the project root, with a secret in the environment that no output
/// may show.
fn logferry(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("LOGFERRY_TEST_PW", "hunter2")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn the_readme_debug_command_prints_the_sample_documents() {
    let out = logferry(&[
        "debug",
        "--once",
        "--from-beginning",
        "examples/var/log/containers/*.log",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = support::parse_docs(&out.stdout);
    // 4 + 14 + 8 + 12 sample lines, less what partial and multiline merging joined, and
    // the 10 lines of a request flow across three services.
    assert_eq!(docs.len(), 28);
    let msg = |needle: &str| {
        docs.iter()
            .find(|d| d["message"].as_str().unwrap().contains(needle))
            .unwrap()
    };
    let java = msg("IllegalStateException");
    assert!(java["message"].as_str().unwrap().ends_with("\t... 12 more"));
    assert_eq!(
        java["kubernetes"]["pod"]["name"],
        "checkout-6c9f7b8d4-k7wzp"
    );
    assert!(msg("Traceback")["message"]
        .as_str()
        .unwrap()
        .ends_with("KeyError: 'revenue'"));
    assert!(msg("goroutine 1")["message"]
        .as_str()
        .unwrap()
        .starts_with("panic: runtime error"));
    assert_eq!(msg("cart contents")["json"]["total_cents"], 12999);
    assert_eq!(
        msg("part one")["message"],
        "a very long line split by docker at 16 KiB: part one, part two, and the end"
    );
    assert_eq!(msg("slow request")["log"]["level"], "warn");
    // The flow's ECS fields, lifted from JSON and logfmt alike.
    let flow: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["user"]["id"] == "u-1042")
        .collect();
    assert_eq!(flow.len(), 7, "one user's flow across three services");
    assert!(flow
        .iter()
        .all(|d| d["trace"]["id"] == "4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(msg("items reserved")["event"]["duration"], 250_000_000);
    assert_eq!(msg("items reserved")["logfmt"]["component"], "cart");
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[source]\nmax_line_bytes = \"lots\"\n",
            "source.max_line_bytes",
        ),
        ("[source]\nstart_at = \"middle\"\n", "source.start_at"),
        ("[sourec]\n", "sourec"),
        (
            "state_dir = \"${LOGFERRY_TEST_UNSET_VAR}\"\n",
            "LOGFERRY_TEST_UNSET_VAR",
        ),
        (
            "[source.multiline]\npresets = [\"cobol\"]\n",
            "source.multiline.presets[0]",
        ),
        ("[output]\ntype = \"kafka\"\n", "output.type"),
        (
            "[source.fields]\ntrace_id = [\"trace_id\", \"trace..id\"]\n",
            "source.fields.trace_id[1]",
        ),
        ("[source.logfmt]\nenable = true\n", "source.logfmt.enable"),
        ("[rate_limit]\nburst = 10\n", "rate_limit.burst"),
        ("log_level = \"info,x=loud\"\n", "log_level"),
    ];
    for (text, key) in cases {
        let p = dir.path().join("bad.toml");
        fs::write(&p, text).unwrap();
        for cmd in [
            vec!["check-config", p.to_str().unwrap()],
            vec!["run", "--config", p.to_str().unwrap()],
        ] {
            let out = logferry(&cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd:?} {text:?}: {err}");
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }
    let out = logferry(&["check-config", "/nonexistent/logferry.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/logferry.toml"));
}

#[test]
fn check_config_prints_the_effective_config_with_variables_resolved() {
    let out = Command::new(BIN)
        .args(["check-config", "config/logferry.toml"])
        .env("NODE_NAME", "node-42")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("host_name = \"node-42\""), "{text}");
    let c = logferry::config::Config::parse(&text, "printed", &|_| None).unwrap();
    assert_eq!(c.source.include, vec!["/var/log/containers/*.log"]);
    // The reference says what the defaults are.
    assert_eq!(c.source.fields, logferry::config::FieldsConfig::default());
    assert_eq!(c.source.logfmt, logferry::config::LogfmtConfig::default());
    assert_eq!(
        c.source.multiline.presets,
        logferry::config::MultilineConfig::default().presets
    );
    assert!(logferry(&["check-config", "config/debug.toml"])
        .status
        .success());
    let compose = Command::new(BIN)
        .args(["check-config", "deploy/compose/logferry.toml"])
        .env("ES_PASSWORD", "x")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        compose.status.success(),
        "{}",
        String::from_utf8_lossy(&compose.stderr)
    );
}

/// Every way a credential could be written or mistyped: refused or redacted, and the
/// secret appears in no output.
#[test]
fn no_output_ever_contains_a_credential() {
    let dir = tempfile::tempdir().unwrap();
    let es = "[output]\ntype = \"elasticsearch\"\n[output.elasticsearch]\n";
    let cases: Vec<(String, &str)> = vec![
        // A literal behind a default gets round the rule against literals.
        (format!("{es}username = \"elastic\"\npassword = \"${{LOGFERRY_TEST_UNSET:-hunter2}}\"\n"), "output.elasticsearch.password"),
        (format!("{es}api_key = \"${{LOGFERRY_TEST_UNSET:-hunter2}}${{X}}\"\n"), "output.elasticsearch.api_key"),
        (format!("{es}bearer_token = \"pre-${{LOGFERRY_TEST_UNSET}}-hunter2\"\n"), "output.elasticsearch.bearer_token"),
        (format!("{es}username = \"elastic\"\npassword = 'hunter2'\n"), "output.elasticsearch.password"),
        (format!("{es}api_key = 31337424\n"), "output.elasticsearch.api_key"),
        // Userinfo in an endpoint, written or from the environment.
        (format!("{es}endpoints = [\"https://elastic:hunter2@es:9200\"]\n"), "output.elasticsearch.endpoints[0]"),
        (format!("{es}endpoints = [\"https://es:1\", \"https://elastic:${{LOGFERRY_TEST_PW}}@es:bad\"]\n"), "output.elasticsearch.endpoints[1]"),
        // TOML errors inside credentials, in every string form.
        (format!("{es}password = \"\"\"\nhunter2-first\nhunter2 \\q second\n\"\"\"\n"), "line 6"),
        (format!("{es}password = \"\"\"\nhunter2\nmore"), "line 6"),
        (format!("{es}password = '''\nhunter2\nmore\n"), "line 6"),
        (format!("{es}password = \"hunter2\" x\n"), "line 4"),
        (format!("{es}\"password\" = \"hunt\\qer2 hunter2\"\n"), "line 4"),
        ("output.elasticsearch.password = \"hunt\\qer2 hunter2\"\n".into(), "line 1"),
        ("[output]\nelasticsearch = { password = \"hunter2\" }\n".into(), "output.elasticsearch.password"),
    ];
    for (text, key) in &cases {
        let p = dir.path().join("secret.toml");
        fs::write(&p, text).unwrap();
        for cmd in [
            vec!["check-config", p.to_str().unwrap()],
            vec!["setup", "--dry-run", "--config", p.to_str().unwrap()],
            vec!["run", "--config", p.to_str().unwrap()],
        ] {
            let out = logferry(&cmd);
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(2), "{cmd:?} {text:?}: {all}");
            assert!(all.contains(key), "{cmd:?} {text:?}: {all}");
            assert!(!all.contains("hunter2"), "{cmd:?} {text:?}: {all}");
            assert!(!all.contains("31337424"), "{cmd:?} {text:?}: {all}");
        }
    }
    // Userinfo is pointed to the keys to use instead.
    let p = dir.path().join("secret.toml");
    fs::write(&p, &cases[5].0).unwrap();
    let err = String::from_utf8(logferry(&["check-config", p.to_str().unwrap()]).stderr).unwrap();
    assert!(
        err.contains("username") && err.contains("password_file"),
        "{err}"
    );
    // Nor a Kibana URL's.
    fs::write(&p, format!("{es}endpoints = [\"https://es:9200\"]\n")).unwrap();
    let out = logferry(&[
        "setup",
        "--config",
        p.to_str().unwrap(),
        "--kibana-url",
        "https://elastic:hunter2@kibana:5601",
    ]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && all.contains("--kibana-url"),
        "{all}"
    );
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn credentials_to_a_plain_http_endpoint_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("es.toml");
    let write = |endpoint: &str| {
        fs::write(
            &p,
            format!("[output]\ntype = \"elasticsearch\"\n[output.elasticsearch]\nendpoints = [\"{endpoint}\"]\nusername = \"elastic\"\npassword_file = \"/run/secrets/pw\"\n"),
        )
        .unwrap();
        let out = logferry(&["check-config", p.to_str().unwrap()]);
        assert!(out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let err = write("http://es:9200");
    assert!(
        err.contains("warning: credentials would be sent in clear text to http://es:9200"),
        "{err}"
    );
    assert_eq!(write("https://es:9200"), "");
}

#[test]
fn include_patterns_that_match_nothing_and_dangling_links_are_said() {
    // Nothing at all to read: `--once` fails, naming the pattern.
    let out = logferry(&["debug", "--once", "/nonexistent/*.log"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no file to read matches \"/nonexistent/*.log\""),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Links into a directory that is not mounted (a Docker node without
    // /var/lib/docker/containers): warned about, with the link and its target.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        "/var/lib/docker/containers/abc/abc-json.log",
        dir.path().join("web_shop_app-abc.log"),
    )
    .unwrap();
    let glob = format!("{}/*.log", dir.path().display());
    let out = logferry(&["debug", "--once", &glob]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("lead to no file"), "{err}");
    assert!(err.contains("web_shop_app-abc.log"), "{err}");
    assert!(
        err.contains("/var/lib/docker/containers/abc/abc-json.log"),
        "{err}"
    );
    // One pattern of two matches nothing: the run goes on and the pattern is named.
    let out = logferry(&[
        "debug",
        "--once",
        "--from-beginning",
        "examples/var/log/containers/*.log",
        "/nonexistent/*.log",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("a pattern matches no file to read"), "{err}");
    assert!(err.contains("/nonexistent/*.log"), "{err}");
    assert!(!out.stdout.is_empty());
}

#[test]
fn usage_errors_exit_2_and_version_exits_0() {
    assert_eq!(logferry(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        logferry(&["debug"]).status.code(),
        Some(2),
        "debug needs paths"
    );
    let v = logferry(&["--version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));
    assert!(logferry(&["--help"]).status.success());
}

#[test]
fn an_unwritable_state_dir_is_a_runtime_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let out = logferry(&[
        "debug",
        "--once",
        "--state-dir",
        file.join("sub").to_str().unwrap(),
        "examples/var/log/containers/*.log",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("state directory"));
}

#[test]
fn setup_dry_run_prints_the_requests_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("es.toml");
    fs::write(
        &p,
        "[output]\ntype = \"elasticsearch\"\n[output.elasticsearch]\nendpoints = [\"https://es.example:9200\"]\nusername = \"elastic\"\npassword = \"${LOGFERRY_TEST_PW}\"\nretention_days = 30\n",
    )
    .unwrap();
    let out = logferry(&["setup", "--config", p.to_str().unwrap(), "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("PUT /_ilm/policy/logferry"));
    assert!(text.contains("\"min_age\": \"30d\""));
    assert!(text.contains("PUT /_index_template/logferry"));
    let with_kibana = logferry(&[
        "setup",
        "--config",
        p.to_str().unwrap(),
        "--dry-run",
        "--kibana-url",
        "https://kibana.example:5601",
    ]);
    let text = String::from_utf8(with_kibana.stdout).unwrap();
    assert!(
        text.contains("POST https://kibana.example:5601/api/saved_objects/_import?overwrite=false")
    );
    assert!(text.contains("\"title\":\"Kubernetes logs\""), "{text}");
    let printed = logferry(&["check-config", p.to_str().unwrap()]);
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert!(printed.contains("password = \"<redacted>\""), "{printed}");
    assert!(!printed.contains("hunter2"));
    fs::write(
        &p,
        "[output]\ntype = \"elasticsearch\"\n[output.elasticsearch]\nendpoints = [\"ftp://x\"]\n",
    )
    .unwrap();
    let out = logferry(&["check-config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("output.elasticsearch.endpoints[0]"));
}

/// Issue 19: `setup` makes a policy and a template per retention class, and the Kibana
/// data view covers the streams of every class.
#[test]
fn setup_dry_run_covers_every_retention_class() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("es.toml");
    fs::write(
        &p,
        "[output]\ntype = \"elasticsearch\"\n[retention]\ndefault = \"30d\"\n[[retention.rules]]\nnamespaces = [\"kube-system\"]\nretention = \"7d\"\n",
    )
    .unwrap();
    let out = logferry(&[
        "setup",
        "--config",
        p.to_str().unwrap(),
        "--dry-run",
        "--kibana-url",
        "https://kibana.example:5601",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    for request in [
        "PUT /_ilm/policy/logferry\n",
        "PUT /_ilm/policy/logferry-r7d\n",
        "PUT /_index_template/logferry\n",
        "PUT /_index_template/logferry-r7d\n",
    ] {
        assert!(text.contains(request), "{request} in {text}");
    }
    assert!(text.contains("\"min_age\": \"30d\""), "{text}");
    assert!(
        text.contains("\"title\":\"logs-kubernetes.r7d-*,logs-kubernetes-*\""),
        "{text}"
    );
    // A bound outside every class names its key.
    fs::write(&p, "[retention]\nmax = \"400d\"\n").unwrap();
    let out = logferry(&["check-config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("retention.max"));
}

#[test]
fn self_logs_in_json_are_one_object_a_line_and_carry_no_log_content() {
    let out = logferry(&[
        "--log-format",
        "json",
        "debug",
        "--once",
        "--from-beginning",
        "examples/var/log/containers/*.log",
    ]);
    assert!(out.status.success());
    let docs = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the agent logs something at info level");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    // No message of the shipped documents appears in the agent's own log.
    for d in docs.lines() {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        let msg = v["message"].as_str().unwrap_or_default();
        if msg.len() >= 12 {
            assert!(
                !stderr.contains(msg),
                "log content in the agent's log: {msg}"
            );
        }
    }
}
