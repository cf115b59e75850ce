//! The deploy/ configs agree with the code and with each other. Each test reads the files
//! as they are (YAML through a real parser), takes the truth about Herald from the binary
//! (`herald --help` for the variables, the same `Config` parser for their values, a live
//! /metrics for the metric names), and fails naming the file, the place and what it found.
//! Also runs `haproxy -c` and `promtool` on the configs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use herald::config::Config;
use serde::Deserialize;
use serde_json::Value;

use crate::support::haproxy;
use crate::support::prometheus::{self, promtool, DEPLOY};
use crate::support::{secs, Gateway};

/// Where Prometheus's image reads its config (compose mounts the files beside it).
const PROMETHEUS_CONFIG_DIR: &str = "/etc/prometheus";
/// Where the haproxy image reads its config.
const HAPROXY_IMAGE_CONFIG: &str = "/usr/local/etc/haproxy/haproxy.cfg";

#[test]
fn every_herald_variable_named_in_deploy_is_one_the_binary_accepts() {
    let accepted = flags();
    let mut files = text_files(Path::new(DEPLOY));
    files.push(repo().join("README.md"));
    let mut unknown = Vec::new();
    let mut seen = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a text file");
        for name in herald_variables(&text) {
            seen += 1;
            if !accepted.contains_key(&name) {
                unknown.push(format!("{}: {name}", rel(file)));
            }
        }
    }
    assert!(
        seen > 0,
        "no HERALD_* names found under deploy/: is the scan broken?"
    );
    assert!(
        unknown.is_empty(),
        "HERALD_* variables that `herald --help` does not list:\n  {}\naccepted: {:?}",
        unknown.join("\n  "),
        accepted.keys().collect::<Vec<_>>()
    );
}

#[test]
fn deploy_env_values_parse_and_validate() {
    // Parsed inside effective_configs(); listing them shows what was checked.
    let configs = effective_configs();
    assert!(
        configs.len() >= 4,
        "compose herald1..3 and the Deployment: {configs:?}"
    );
    for (source, env, config) in &configs {
        let log = tracing_subscriber::EnvFilter::try_new(&config.log);
        assert!(
            log.is_ok(),
            "{source}: HERALD_LOG {:?}: {log:?}",
            config.log
        );
        assert!(
            env.keys().any(|k| k == "HERALD_REDIS_URL"),
            "{source}: no HERALD_REDIS_URL; the default 127.0.0.1 is not Redis in a container"
        );
    }
}

#[test]
fn kubernetes_deployment_probes_and_port_match_the_binary() {
    let deployment = k8s_doc("Deployment");
    let container = herald_container(&deployment);
    let config = k8s_config();
    let listen = config.listen.port();
    let ports = container["ports"].as_array().cloned().unwrap_or_default();
    let named = ports
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(listen)));
    let named = named.unwrap_or_else(|| {
        panic!("deployment.yaml: no containerPort {listen} (HERALD_LISTEN's port) in {ports:?}")
    });
    let port_name = named["name"].as_str().unwrap_or_default().to_owned();
    let targets_listener = |port: &Value| {
        port.as_str() == Some(port_name.as_str()) || port.as_u64() == Some(u64::from(listen))
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            get["path"], path,
            "deployment.yaml: {probe} must GET {path}; found {}",
            container[probe]
        );
        assert!(
            targets_listener(&get["port"]),
            "deployment.yaml: {probe} port {} is not the listener ({port_name:?}/{listen})",
            get["port"]
        );
    }
    // The image's EXPOSE is the same port.
    let image = dockerfile();
    let exposed = image.expose.iter().any(|p| p == &listen.to_string());
    assert!(
        exposed,
        "Dockerfile EXPOSE {:?} lacks {listen}",
        image.expose
    );
    // The Dockerfile's HEALTHCHECK runs healthcheck.sh, which GETs /healthz.
    let check = image.healthcheck.first().cloned().unwrap_or_default();
    let copied = image.copies.iter().find(|(_, dest)| *dest == check);
    let (source, _) = copied.unwrap_or_else(|| {
        panic!("Dockerfile HEALTHCHECK runs {check:?}, which no COPY puts there")
    });
    let script = std::fs::read_to_string(repo().join(source))
        .unwrap_or_else(|e| panic!("Dockerfile COPY source {source}: {e}"));
    assert!(
        script.contains("GET /healthz"),
        "{source} does not GET /healthz"
    );
}

#[test]
fn kubernetes_service_monitor_pdb_and_hpa_target_the_pods() {
    let deployment = k8s_doc("Deployment");
    let name = deployment["metadata"]["name"]
        .as_str()
        .expect("Deployment name");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let container = herald_container(&deployment);
    let container_ports = container["ports"].as_array().cloned().unwrap_or_default();

    let service = k8s_doc("Service");
    assert_subset(
        &service["spec"]["selector"],
        pod_labels,
        "service.yaml spec.selector",
    );
    let service_ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for port in &service_ports {
        let target = &port["targetPort"];
        let hits = container_ports
            .iter()
            .any(|p| &p["name"] == target || &p["containerPort"] == target);
        assert!(
            hits,
            "service.yaml: targetPort {target} is not a container port: {container_ports:?}"
        );
    }

    let monitor = k8s_doc("ServiceMonitor");
    assert_subset(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"],
        "servicemonitor.yaml spec.selector.matchLabels (against the Service's labels)",
    );
    let endpoints = monitor["spec"]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!endpoints.is_empty(), "servicemonitor.yaml: no endpoints");
    for endpoint in &endpoints {
        let named = service_ports.iter().any(|p| p["name"] == endpoint["port"]);
        assert!(
            named,
            "servicemonitor.yaml: endpoint port {} is not a Service port name: {service_ports:?}",
            endpoint["port"]
        );
        let path = endpoint["path"].as_str().unwrap_or("/metrics");
        assert_eq!(path, "/metrics", "servicemonitor.yaml: endpoint path");
    }
    // The Operator names the job after the Service; the alerts and the dashboard select
    // job="herald", as does deploy/prometheus.yml.
    let job = prometheus_job()["job_name"].clone();
    assert_eq!(
        service["metadata"]["name"], job,
        "service.yaml name (the Operator's job label) vs prometheus.yml job_name"
    );

    let pdb = k8s_doc("PodDisruptionBudget");
    assert_subset(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels,
        "pdb.yaml selector",
    );
    let hpa = k8s_doc("HorizontalPodAutoscaler");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (target["kind"].as_str(), target["name"].as_str()),
        (Some("Deployment"), Some(name)),
        "hpa.yaml scaleTargetRef"
    );

    // kustomization.yaml lists exactly the other manifests.
    let kustomization = yaml_docs("kubernetes/kustomization.yaml").remove(0);
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = k8s_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs kubernetes/*.yaml"
    );

    // prometheusrule.yaml is "the same group, word for word" as prometheus-rules.yml.
    let operator_rules = k8s_doc("PrometheusRule");
    let plain_rules = yaml_docs("prometheus-rules.yml").remove(0);
    assert_eq!(
        operator_rules["spec"]["groups"], plain_rules["groups"],
        "kubernetes/prometheusrule.yaml spec.groups differ from prometheus-rules.yml groups"
    );
}

/// Herald's own shutdown deadline after SIGTERM (src/app.rs): the drain period, then up to
/// two write timeouts for the last close handshakes, after which it exits regardless. A
/// grace period shorter than that lets SIGKILL, not Herald, end the drain.
#[test]
fn stop_grace_periods_cover_herald_shutdown_deadline() {
    let mut short = Vec::new();

    let deployment = k8s_doc("Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let container = herald_container(&deployment);
    let pre_stop = pre_stop_sleep(&container["lifecycle"]["preStop"]);
    let config = k8s_config();
    let needed = pre_stop + shutdown_deadline(&config);
    if secs(grace) <= needed {
        short.push(format!(
            "kubernetes/deployment.yaml: terminationGracePeriodSeconds {grace}s <= preStop \
             sleep {pre_stop:?} + HERALD_DRAIN_PERIOD {:?} + 2 x HERALD_WRITE_TIMEOUT {:?}",
            config.drain_period, config.write_timeout
        ));
    }

    let compose = compose();
    for (service, config) in compose_herald_configs() {
        let raw = compose["services"][&service]["stop_grace_period"].as_str();
        // compose's default is 10s.
        let grace = humantime::parse_duration(raw.unwrap_or("10s"))
            .unwrap_or_else(|e| panic!("compose {service} stop_grace_period {raw:?}: {e}"));
        if grace <= shutdown_deadline(&config) {
            short.push(format!(
                "compose.yaml {service}: stop_grace_period {grace:?} <= HERALD_DRAIN_PERIOD {:?} \
                 + 2 x HERALD_WRITE_TIMEOUT {:?}",
                config.drain_period, config.write_timeout
            ));
        }
    }
    assert!(
        short.is_empty(),
        "grace periods shorter than Herald's shutdown deadline (src/app.rs: drain period + 2 \
         write timeouts), so SIGKILL may end a drain Herald would finish; raise the grace \
         period or lower the drain period / write timeout:\n  {}",
        short.join("\n  ")
    );
}

#[test]
fn compose_files_services_and_addresses_agree() {
    let compose = compose();
    let deploy = Path::new(DEPLOY);
    let services = compose["services"].as_object().expect("compose services");

    // Every file a service builds from or mounts exists.
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            let context = deploy.join(build["context"].as_str().unwrap_or("."));
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(
                dockerfile.is_file(),
                "compose {name}: no {}",
                dockerfile.display()
            );
        }
        for (source, _) in mounts(service) {
            let path = deploy.join(&source);
            assert!(
                path.exists(),
                "compose {name}: volume source {source} does not exist"
            );
        }
    }

    let heralds = compose_herald_configs();
    let herald_names: BTreeSet<&str> = heralds.keys().map(String::as_str).collect();
    // Each Herald reaches Redis through a compose service.
    for (name, config) in &heralds {
        let url = url::Url::parse(&config.redis_url).expect("validated URL");
        let host = url.host_str().unwrap_or_default();
        assert!(
            services.contains_key(host),
            "compose {name}: HERALD_REDIS_URL host {host:?} is not a compose service"
        );
    }

    // HAProxy: every ${VAR} its config reads is set, and the servers are the Heralds'
    // listeners.
    let haproxy_service = &compose["services"]["haproxy"];
    let haproxy_env = service_env(haproxy_service);
    let cfg = std::fs::read_to_string(haproxy::CONFIG).expect("read haproxy.cfg");
    for var in config_variables(&cfg) {
        assert!(
            haproxy_env.contains_key(&var),
            "haproxy.cfg reads ${{{var}}}, which compose's haproxy service does not set"
        );
    }
    let mut servers = BTreeSet::new();
    for (var, value) in &haproxy_env {
        if var.starts_with("HERALD") && var.ends_with("_ADDR") {
            servers.insert(value.clone());
        }
    }
    let listeners: BTreeSet<String> = heralds
        .iter()
        .map(|(name, config)| format!("{name}:{}", config.listen.port()))
        .collect();
    assert_eq!(
        servers, listeners,
        "compose haproxy HERALDn_ADDR vs the Herald services"
    );
    let haproxy_mounts = mounts(haproxy_service);
    assert!(
        haproxy_mounts
            .iter()
            .any(|(s, t)| s == "./haproxy.cfg" && t == HAPROXY_IMAGE_CONFIG),
        "compose haproxy must mount ./haproxy.cfg at {HAPROXY_IMAGE_CONFIG}: {haproxy_mounts:?}"
    );

    // Prometheus: prometheus.yml's relative paths (rules, targets) land beside it in the
    // container, and the compose targets file lists the Herald listeners.
    let prometheus_mounts = mounts(&compose["services"]["prometheus"]);
    let config_target = format!("{PROMETHEUS_CONFIG_DIR}/prometheus.yml");
    assert!(
        prometheus_mounts
            .iter()
            .any(|(s, t)| s == "./prometheus.yml" && *t == config_target),
        "compose prometheus must mount ./prometheus.yml at {config_target}: {prometheus_mounts:?}"
    );
    for relative in prometheus_relative_paths() {
        let inside = format!("{PROMETHEUS_CONFIG_DIR}/{relative}");
        let covered = prometheus_mounts.iter().any(|(source, target)| {
            let file = if inside == *target {
                deploy.join(source)
            } else if let Some(rest) = inside.strip_prefix(&format!("{target}/")) {
                deploy.join(source).join(rest)
            } else {
                return false;
            };
            file.is_file()
        });
        assert!(
            covered,
            "prometheus.yml reads {relative} ({inside} in the container), which no compose \
             prometheus volume provides: {prometheus_mounts:?}"
        );
    }
    let file_sd: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("targets/herald.json")).expect("targets/herald.json"),
    )
    .expect("targets/herald.json is JSON");
    let targets: BTreeSet<String> = file_sd
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| strings(&group["targets"]))
        .collect();
    assert_eq!(
        targets, listeners,
        "targets/herald.json vs the compose Herald services"
    );
    assert_eq!(herald_names.len(), 3, "three Herald services in compose");
}

#[test]
fn haproxy_cfg_checks_readyz_and_passes_haproxy_c() {
    let cfg = std::fs::read_to_string(haproxy::CONFIG).expect("read haproxy.cfg");
    let lines: Vec<String> = cfg
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let has = |wanted: &str| {
        lines
            .iter()
            .any(|l| l.split_whitespace().eq(wanted.split_whitespace()))
    };
    for wanted in [
        "mode http",
        "option httpchk GET /readyz",
        "http-check expect status 200",
        "bind \"${HAPROXY_BIND}\"",
    ] {
        assert!(
            has(wanted),
            "haproxy.cfg lacks `{wanted}`; its directives:\n{lines:#?}"
        );
    }
    // Herald refuses a WebSocket with 503 while draining or full: HAProxy must retry those
    // on another instance (the scale-out test counts how often this happens).
    let retry_on = lines.iter().find(|l| l.starts_with("retry-on "));
    assert!(
        retry_on.is_some_and(|l| l.split_whitespace().any(|w| w == "503")),
        "haproxy.cfg: retry-on must include 503; found {retry_on:?}"
    );
    // Health checks on every server.
    let checked = lines
        .iter()
        .any(|l| l.starts_with("default-server") && l.split_whitespace().any(|w| w == "check"));
    assert!(checked, "haproxy.cfg: default-server without `check`");
    for i in 1..=3 {
        let server = format!("server herald{i} \"${{HERALD{i}_ADDR}}\"");
        assert!(has(&server), "haproxy.cfg lacks `{server}`");
    }
    // An idle WebSocket is pinged every heartbeat: the tunnel timeout must outlast it.
    let tunnel = lines
        .iter()
        .find_map(|l| l.strip_prefix("timeout tunnel "))
        .expect("haproxy.cfg: timeout tunnel");
    let tunnel = humantime::parse_duration(tunnel.trim()).expect("timeout tunnel value");
    for (source, _, config) in effective_configs() {
        assert!(
            tunnel > config.heartbeat * 2,
            "haproxy.cfg timeout tunnel {tunnel:?} <= two heartbeats of {source} ({:?})",
            config.heartbeat
        );
    }

    let backends = [1, 2, 3].map(|i| SocketAddr::from(([127, 0, 0, 1], 18080 + i)));
    let env = haproxy::env(SocketAddr::from(([127, 0, 0, 1], 18080)), backends);
    let output = haproxy::check_config(Path::new(haproxy::CONFIG), &env);
    assert!(
        output.status.success(),
        "haproxy -c -f deploy/haproxy.cfg ({env:?}): {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_config_scrapes_metrics_and_passes_promtool() {
    let job = prometheus_job();
    assert_eq!(job["job_name"], "herald", "prometheus.yml job");
    let path = job["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(path, "/metrics", "prometheus.yml metrics_path");
    let scheme = job["scheme"].as_str().unwrap_or("http");
    assert_eq!(
        scheme, "http",
        "prometheus.yml scheme (Herald serves plain HTTP)"
    );
    for relative in prometheus_relative_paths() {
        let file = Path::new(DEPLOY).join(&relative);
        assert!(
            file.is_file(),
            "prometheus.yml reads {relative}, missing from deploy/"
        );
    }

    // promtool on a temp copy, set up as for a local run (the targets file written).
    let dir = prometheus::temp_dir("promtool");
    let config = prometheus::write_config_dir(&dir, &[SocketAddr::from(([127, 0, 0, 1], 18081))]);
    let checked = promtool(&["check", "config", config.to_str().expect("UTF-8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_success(
        "promtool check config (temp copy of deploy/prometheus.yml)",
        &checked,
    );
    let tests = Path::new(DEPLOY).join("prometheus-rules.test.yml");
    let tested = promtool(&["test", "rules", tests.to_str().expect("UTF-8 path")]);
    assert_success(
        "promtool test rules deploy/prometheus-rules.test.yml",
        &tested,
    );
}

/// Every herald_* series the alert rules and the dashboard select, with its label
/// matchers, exists in a live /metrics of the binary (no Redis needed for that), and every
/// job they name is prometheus.yml's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_select_series_herald_exports() {
    let gw = Gateway::start("redis://127.0.0.1:1/", &[]).await;
    let scrape = gw.metrics().await;
    let job = prometheus_job()["job_name"]
        .as_str()
        .expect("job_name")
        .to_owned();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(DEPLOY).join("grafana/herald.json")).expect("read"),
    )
    .expect("grafana/herald.json is JSON");
    let sources = [
        ("prometheus-rules.yml", yaml_docs("prometheus-rules.yml")),
        (
            "kubernetes/prometheusrule.yaml",
            yaml_docs("kubernetes/prometheusrule.yaml"),
        ),
        ("grafana/herald.json", vec![dashboard]),
    ];
    let mut missing = Vec::new();
    let mut checked = 0;
    for (file, docs) in &sources {
        let mut exprs = Vec::new();
        for doc in docs {
            expressions(doc, &mut exprs);
        }
        assert!(!exprs.is_empty(), "{file}: no expressions found");
        for expr in &exprs {
            for (name, matchers) in selectors(expr) {
                checked += 1;
                let labels: Vec<(&str, &str)> = matchers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                if scrape.try_value(&name, &labels).is_none() {
                    missing.push(format!("{file}: {name}{matchers:?} in {expr}"));
                }
            }
            for named in job_matchers(expr) {
                if named != job && !named.starts_with('$') {
                    missing.push(format!(
                        "{file}: job=\"{named}\" (the job is {job}) in {expr}"
                    ));
                }
            }
        }
    }
    assert!(
        checked > 10,
        "found only {checked} selectors: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "series selected in deploy/ that herald's /metrics does not have:\n  {}\n/metrics:\n{}",
        missing.join("\n  "),
        scrape.text
    );
}

/// The scanners above find what they look for, and skip what they must not flag.
#[test]
fn the_scanners_find_what_they_look_for() {
    assert_eq!(
        herald_variables("HERALD_LISTEN=x HERALD1_ADDR $HERALD_LOG HERALD_* MYHERALD_X HERALD_"),
        ["HERALD_LISTEN", "HERALD_LOG"]
    );
    let found = selectors(
        r#"rate(herald_dropped_total{instance=~"$i",reason="queue_full",job="herald"}[5m]) / herald_x"#,
    );
    let expected = vec![
        (
            "herald_dropped_total".to_owned(),
            vec![("reason".to_owned(), "queue_full".to_owned())],
        ),
        ("herald_x".to_owned(), vec![]),
    ];
    assert_eq!(found, expected);
    assert_eq!(
        config_variables("bind \"${A}\" # ${B}\nserver s \"${C}\" check"),
        BTreeSet::from(["A".to_owned(), "C".to_owned()])
    );
    assert_eq!(
        job_matchers(r#"up{job="herald"} + up{job="$job"}"#),
        ["herald", "$job"]
    );
}

// ---- what the binary says ----

/// `HERALD_*` variable -> its flag, from `herald --help` of the binary under test.
fn flags() -> &'static BTreeMap<String, String> {
    static FLAGS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--help")
            .env_clear()
            .output()
            .expect("run herald --help");
        assert!(output.status.success(), "herald --help: {}", output.status);
        let help = String::from_utf8(output.stdout).expect("UTF-8 help");
        let mut flags = BTreeMap::new();
        let mut flag = None;
        for line in help.lines() {
            let line = line.trim();
            if line.starts_with("--") {
                flag = line.split_whitespace().next().map(str::to_owned);
            }
            // `[env: HERALD_LISTEN=]`, or `[env: HERALD_JWT_SECRET]` for a hidden value.
            if let Some(rest) = line.strip_prefix("[env: ") {
                let name = rest.split(['=', ']']).next().unwrap_or_default().to_owned();
                let flag = flag
                    .clone()
                    .unwrap_or_else(|| panic!("{name} before any flag"));
                flags.insert(name, flag);
            }
        }
        assert!(
            flags.contains_key("HERALD_LISTEN") && flags.len() > 10,
            "could not read the variables from herald --help:\n{help}"
        );
        flags
    })
}

/// Parses `env` (HERALD_* -> value) with the binary's own parser and validation, each
/// variable passed as its flag; panics naming `source` and what was refused.
fn parse_env(source: &str, env: &BTreeMap<String, String>) -> Config {
    let mut args = vec!["herald".to_owned()];
    for (name, value) in env {
        let flag = flags()
            .get(name)
            .unwrap_or_else(|| panic!("{source}: {name} is not a variable herald accepts"));
        args.push(format!("{flag}={value}"));
    }
    let config = Config::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{source}: herald refuses {env:?}:\n{e}"));
    if let Err(e) = config.validate() {
        panic!("{source}: herald would exit 64: {e} (from {env:?})");
    }
    config
}

/// (where, the HERALD_* variables, the config they make) for each Herald the deploy files
/// run: compose's services and the Kubernetes container, each over the image's ENV.
fn effective_configs() -> Vec<(String, BTreeMap<String, String>, Config)> {
    let image = dockerfile().env;
    let mut all = Vec::new();
    for (service, env) in compose_herald_envs() {
        let mut merged = image.clone();
        merged.extend(env);
        let source = format!("compose.yaml {service} (over the Dockerfile's ENV)");
        let config = parse_env(&source, &merged);
        all.push((source, merged, config));
    }
    let (env, _) = k8s_env();
    let mut merged = image;
    merged.extend(env);
    let source = "kubernetes/deployment.yaml (over the Dockerfile's ENV)".to_owned();
    let config = parse_env(&source, &merged);
    all.push((source, merged, config));
    all
}

fn shutdown_deadline(config: &Config) -> Duration {
    config.drain_period + config.write_timeout * 2
}

// ---- compose ----

fn compose() -> Value {
    yaml_docs("compose.yaml").remove(0)
}

/// The HERALD_* environment of each compose service that sets any.
fn compose_herald_envs() -> BTreeMap<String, BTreeMap<String, String>> {
    let compose = compose();
    let services = compose["services"].as_object().expect("compose services");
    services
        .iter()
        .map(|(name, service)| (name.clone(), herald_only(service_env(service))))
        .filter(|(_, env)| !env.is_empty())
        .collect()
}

fn compose_herald_configs() -> BTreeMap<String, Config> {
    let image = dockerfile().env;
    compose_herald_envs()
        .into_iter()
        .map(|(service, env)| {
            let mut merged = image.clone();
            merged.extend(env);
            let config = parse_env(&format!("compose.yaml {service}"), &merged);
            (service, config)
        })
        .collect()
}

/// A compose service's `environment`, as a map or as a list of `K=V`.
fn service_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(|item| item.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A service's bind mounts in short syntax `source:target[:mode]`, sources relative to
/// deploy/ (named volumes and the long syntax are not used here).
fn mounts(service: &Value) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

// ---- Kubernetes ----

fn k8s_files() -> Vec<PathBuf> {
    let dir = Path::new(DEPLOY).join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The one document of `kind` among deploy/kubernetes/*.yaml (all of which must parse).
fn k8s_doc(kind: &str) -> Value {
    let mut found = Vec::new();
    for file in k8s_files() {
        let relative = format!("kubernetes/{}", file.file_name().unwrap().to_string_lossy());
        for doc in yaml_docs(&relative) {
            if doc["kind"] == kind {
                found.push(doc);
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "documents of kind {kind} in deploy/kubernetes"
    );
    found.remove(0)
}

fn herald_container(deployment: &Value) -> Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let herald = containers.iter().find(|c| c["name"] == "herald");
    herald
        .unwrap_or_else(|| panic!("deployment.yaml: no container named herald in {containers:?}"))
        .clone()
}

/// The container's HERALD_* variables with a literal value, and the names set through
/// valueFrom (from a Secret or ConfigMap: only the name can be checked).
fn k8s_env() -> (BTreeMap<String, String>, Vec<String>) {
    let container = herald_container(&k8s_doc("Deployment"));
    let mut values = BTreeMap::new();
    let mut from = Vec::new();
    for item in container["env"].as_array().into_iter().flatten() {
        let name = item["name"].as_str().expect("env name").to_owned();
        if !name.starts_with("HERALD_") {
            continue;
        }
        match item.get("value") {
            Some(value) => {
                values.insert(name, scalar(value));
            }
            None => from.push(name),
        }
    }
    (values, from)
}

fn k8s_config() -> Config {
    let (env, from) = k8s_env();
    for name in &from {
        assert!(
            flags().contains_key(name),
            "deployment.yaml: {name} (valueFrom) is not a variable herald accepts"
        );
    }
    let mut merged = dockerfile().env;
    merged.extend(env);
    parse_env("kubernetes/deployment.yaml", &merged)
}

/// The preStop delay: the `sleep` action, or an `exec` of `sleep N`; none is zero.
fn pre_stop_sleep(pre_stop: &Value) -> Duration {
    if let Some(seconds) = pre_stop["sleep"]["seconds"].as_u64() {
        return secs(seconds);
    }
    let command = strings(&pre_stop["exec"]["command"]);
    match command.as_slice() {
        [] => Duration::ZERO,
        [sleep, n] if sleep.ends_with("sleep") => {
            secs(n.parse().unwrap_or_else(|_| panic!("preStop sleep {n:?}")))
        }
        other => panic!("deployment.yaml: a preStop this test cannot time: {other:?}"),
    }
}

// ---- Prometheus ----

fn prometheus_job() -> Value {
    let config = yaml_docs("prometheus.yml").remove(0);
    let jobs = config["scrape_configs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(jobs.len(), 1, "prometheus.yml scrape_configs: {jobs:?}");
    jobs[0].clone()
}

/// The files prometheus.yml names by relative path: its rule files and file_sd files.
fn prometheus_relative_paths() -> Vec<String> {
    let config = yaml_docs("prometheus.yml").remove(0);
    let mut paths = strings(&config["rule_files"]);
    for sd in prometheus_job()["file_sd_configs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        paths.extend(strings(&sd["files"]));
    }
    assert!(!paths.is_empty(), "prometheus.yml names no files");
    for path in &paths {
        assert!(
            !path.starts_with('/'),
            "prometheus.yml: {path} is absolute; compose and the local test rely on relative paths"
        );
    }
    paths
}

fn assert_success(what: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{what}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---- the Dockerfile ----

#[derive(Debug, Default)]
struct Dockerfile {
    env: BTreeMap<String, String>,
    expose: Vec<String>,
    /// (source, destination) of each COPY from the build context.
    copies: Vec<(String, String)>,
    /// The HEALTHCHECK's exec-form command.
    healthcheck: Vec<String>,
}

/// The instructions this test needs from deploy/Dockerfile, continuation lines joined.
fn dockerfile() -> Dockerfile {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("Dockerfile")).expect("Dockerfile");
    let mut image = Dockerfile::default();
    let mut joined = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(start) = line.strip_suffix('\\') {
            joined.push_str(start);
            joined.push(' ');
            continue;
        }
        joined.push_str(line);
        let instruction = std::mem::take(&mut joined);
        let mut words = instruction.split_whitespace();
        match words.next() {
            Some("ENV") => {
                for word in words {
                    let (k, v) = word.split_once('=').unwrap_or_else(|| {
                        panic!("Dockerfile ENV in the legacy form: {instruction}")
                    });
                    image
                        .env
                        .insert(k.to_owned(), v.trim_matches('"').to_owned());
                }
            }
            Some("EXPOSE") => image
                .expose
                .extend(words.map(|w| w.split('/').next().unwrap().to_owned())),
            Some("COPY") => {
                let args: Vec<&str> = words.collect();
                if args.iter().any(|a| a.starts_with("--from")) {
                    continue;
                }
                let args: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
                if let Some((dest, sources)) = args.split_last() {
                    for source in sources {
                        image.copies.push((source.to_string(), dest.to_string()));
                    }
                }
            }
            Some("HEALTHCHECK") => {
                let (_, cmd) = instruction.split_once(" CMD ").expect("HEALTHCHECK CMD");
                image.healthcheck =
                    serde_json::from_str(cmd.trim()).expect("HEALTHCHECK CMD in exec (JSON) form");
            }
            _ => {}
        }
    }
    image.env = herald_only(image.env);
    image
}

// ---- reading files ----

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every document of a YAML file under deploy/, as JSON values.
fn yaml_docs(relative: &str) -> Vec<Value> {
    let path = Path::new(DEPLOY).join(relative);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read deploy/{relative}: {e}"));
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("deploy/{relative} is not valid YAML: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect();
    assert!(!docs.is_empty(), "deploy/{relative} holds no YAML document");
    docs
}

/// Text files under `dir`, recursively.
fn text_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(text_files(&path));
        } else if std::fs::read_to_string(&path).is_ok() {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `HERALD_[A-Z0-9_]+` tokens (not `HERALD1_ADDR`, not the `HERALD_*` wildcard).
fn herald_variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("HERALD_") {
        let start = from + at;
        let word_start =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |e| start + e);
        let name = &text[start..end];
        if word_start && name.len() > "HERALD_".len() && !name.ends_with('_') {
            names.push(name.to_owned());
        }
        from = end.max(start + 1);
    }
    names
}

/// `${VAR}` references in an HAProxy config, outside comments.
fn config_variables(cfg: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for line in cfg.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else { break };
            vars.insert(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    vars
}

/// The PromQL strings in a rules file or dashboard: values of `expr` (rules, panels) and
/// of a template variable's `definition` or `query`.
fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::String(s) if ["expr", "definition", "query"].contains(&key.as_str()) => {
                        out.push(s.clone())
                    }
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// The values of `job="..."` matchers in `expr`.
fn job_matchers(expr: &str) -> Vec<String> {
    expr.match_indices("job=\"")
        .filter_map(|(at, m)| {
            let rest = &expr[at + m.len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

/// Series selectors `herald_name{k="v",...}` in PromQL found in `text`: the name and its
/// equality matchers, less the target labels Prometheus adds (job, instance).
fn selectors(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("herald_") {
        let start = from + at;
        let bytes = text.as_bytes();
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            from = start + 1;
            continue;
        }
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |e| start + e);
        let name = text[start..end].to_owned();
        let mut matchers = Vec::new();
        if text[end..].starts_with('{') {
            let close = text[end..].find('}').map_or(text.len(), |c| end + c);
            for matcher in text[end + 1..close].split(',') {
                // Only k="v"; =~ and != select by pattern and are not checked.
                if let Some((k, v)) = matcher.split_once("=\"") {
                    let k = k.trim();
                    if !k.ends_with(['!', '=', '~']) && k != "job" && k != "instance" {
                        matchers.push((k.to_owned(), v.trim_end_matches('"').to_owned()));
                    }
                }
            }
        }
        found.push((name, matchers));
        from = end;
    }
    found
}

// ---- small helpers ----

fn herald_only(env: BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.into_iter()
        .filter(|(k, _)| k.starts_with("HERALD_"))
        .collect()
}

/// A YAML scalar as the string a process would see in its environment.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Every key/value of `subset` is in `of`.
fn assert_subset(subset: &Value, of: &Value, what: &str) {
    let subset = subset
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a map: {subset}"));
    assert!(
        !subset.is_empty(),
        "{what} is empty: it would select everything"
    );
    for (k, v) in subset {
        assert_eq!(of.get(k), Some(v), "{what}: {k}={v} is not among {of}");
    }
}
