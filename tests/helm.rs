//! The Helm chart: `helm lint --strict`, every rendering valid against Kubernetes' schemas (`kubernetes-validate --strict`), the plain manifests in step with the chart, and the binary started with exactly the environment a kubelet gives a pod of the rendered StatefulSet, service links included.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_norway::Value;
use standin::service::grpc::proto::StatusRequest;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::testing::{EtcdServer, free_loopback_port};
use support::*;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/standin");
/// The plain manifests, rendered from the chart with existing secrets.
const MANIFESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/standin.yaml"
);
/// How deploy/kubernetes/standin.yaml is rendered (its header says so too).
const PLAIN_SETTINGS: &[&str] = &[
    "--namespace",
    "standin",
    "--set",
    "witness.existingSecret=standin-witness",
    "--set",
    "api.existingSecret=standin-api",
];

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// `helm template standin CHART ARGS`: the rendered manifests.
fn render(args: &[&str]) -> anyhow::Result<String> {
    let output = run(Command::new("helm")
        .args(["template", "standin", CHART])
        .args(args))?;
    Ok(String::from_utf8(output.stdout)?)
}

/// Validates manifests against the schemas of a current Kubernetes.
fn validate(manifests: &str) -> anyhow::Result<Output> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("manifests.yaml");
    std::fs::write(&path, manifests)?;
    Ok(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&path)
        .output()?)
}

/// The objects of a multi-document YAML stream.
fn objects(manifests: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for document in manifests.split("\n---") {
        let value: Value = serde_norway::from_str(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

#[test]
fn the_chart_lints_and_every_rendering_validates() -> anyhow::Result<()> {
    init_logging();
    for values in [
        &[][..],
        &["--set", "metrics.serviceMonitor.enabled=true"][..],
        &[
            "--set",
            "etcd.tls.enabled=true,etcd.tls.secretName=etcd-client",
            "--set",
            "etcd.auth.enabled=true,etcd.auth.secretName=etcd-password",
            "--set",
            "api.tls.enabled=true,api.tls.secretName=standin-tls",
            "--set",
            "activeStandby.enabled=false,replicaCount=1,metrics.enabled=false",
        ][..],
        PLAIN_SETTINGS,
    ] {
        info!(?values, "--- lint and render");
        run(Command::new("helm")
            .args(["lint", "--strict", CHART])
            .args(values))?;
        let manifests = render(values)?;
        let validated = validate(&manifests)?;
        let said = String::from_utf8_lossy(&validated.stdout);
        assert!(validated.status.success(), "{values:?}: {said}");
        // Only the Prometheus Operator's kind has no schema here.
        for line in said.lines() {
            assert!(line.contains("kind ServiceMonitor"), "{values:?}: {line}");
        }
    }
    Ok(())
}

#[test]
fn the_validator_rejects_what_kubernetes_would() -> anyhow::Result<()> {
    let manifests = render(&[])?.replace(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: true\n            readOnlyRootFilesytem: true",
    );
    let validated = validate(&manifests)?;
    assert!(!validated.status.success());
    assert!(
        String::from_utf8_lossy(&validated.stdout).contains("readOnlyRootFilesytem"),
        "{}",
        String::from_utf8_lossy(&validated.stdout)
    );
    Ok(())
}

#[test]
fn the_plain_manifests_are_the_charts_rendering() -> anyhow::Result<()> {
    let committed = std::fs::read_to_string(MANIFESTS)?;
    let rendered = render(PLAIN_SETTINGS)?;
    let body = committed
        .split_once("\n---\n")
        .map_or(committed.as_str(), |(_, body)| body);
    assert_eq!(
        body.trim(),
        rendered.trim().trim_start_matches("---").trim(),
        "deploy/kubernetes/standin.yaml is stale: render it again with `make manifests`"
    );
    Ok(())
}

#[test]
fn the_pods_are_what_an_operator_expects() -> anyhow::Result<()> {
    let objects = objects(&render(&[])?)?;
    let set = of_kind(&objects, "StatefulSet")[0];
    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: BTreeMap<String, &Value> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (text(&e["name"]), e))
        .collect();
    // Published addresses are the pod's own IP, never 0.0.0.0.
    assert_eq!(
        env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(env["STANDIN_NODE_ADDRESS"]["value"], "$(POD_IP):19530");
    assert_eq!(
        env["STANDIN_NODE_WITNESS_ADVERTISED_ADDRESS"]["value"],
        "$(POD_IP):19531"
    );
    // The grace period covers the preStop pause, the handover and the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert!(grace >= pause + 12 + 5, "grace {grace}s, preStop {pause}s");
    // Readiness asks for a live session, liveness only for the process.
    let readiness = &container["readinessProbe"]["exec"]["command"];
    let liveness = &container["livenessProbe"]["exec"]["command"];
    assert_eq!(readiness.as_sequence().unwrap().last().unwrap(), "probe");
    assert_eq!(liveness.as_sequence().unwrap().last().unwrap(), "--live");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        of_kind(&objects, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"],
        1
    );
    let headless = of_kind(&objects, "Service")
        .into_iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    // Secrets the chart makes are kept across upgrades and uninstalls.
    for secret in of_kind(&objects, "Secret") {
        assert_eq!(
            secret["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
    Ok(())
}

/// The variables a kubelet sets for every Service with a cluster IP in the
/// pod's namespace (`enableServiceLinks`, on by default).
fn service_links(name: &str, ip: &str, ports: &[(Option<&str>, u64)]) -> Vec<(String, String)> {
    let prefix = name.to_ascii_uppercase().replace('-', "_");
    let mut links = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.to_owned()),
        (format!("{prefix}_SERVICE_PORT"), ports[0].1.to_string()),
        (
            format!("{prefix}_PORT"),
            format!("tcp://{ip}:{}", ports[0].1),
        ),
    ];
    for (port_name, port) in ports {
        if let Some(port_name) = port_name {
            links.push((
                format!(
                    "{prefix}_SERVICE_PORT_{}",
                    port_name.to_ascii_uppercase().replace('-', "_")
                ),
                port.to_string(),
            ));
        }
        let base = format!("{prefix}_PORT_{port}_TCP");
        links.push((base.clone(), format!("tcp://{ip}:{port}")));
        links.push((format!("{base}_PROTO"), "tcp".to_owned()));
        links.push((format!("{base}_PORT"), port.to_string()));
        links.push((format!("{base}_ADDR"), ip.to_owned()));
    }
    links
}

/// `$(NAME)` references to earlier variables expanded, as the kubelet does.
fn expand(value: &str, earlier: &[(String, String)]) -> String {
    let mut expanded = value.to_owned();
    for (name, set) in earlier {
        expanded = expanded.replace(&format!("$({name})"), set);
    }
    expanded
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_of_the_chart_serves_with_the_environment_a_kubelet_gives_it() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (api, witness, metrics) = (
        free_loopback_port()?,
        free_loopback_port()?,
        free_loopback_port()?,
    );
    let endpoints = format!("etcd.endpoints={{{}}}", etcd.endpoint());
    let ports = format!("service.port={api},witness.port={witness},metrics.port={metrics}");
    let objects = objects(&render(&["--set", &endpoints, "--set", &ports])?)?;
    let set = of_kind(&objects, "StatefulSet")[0];
    let container = &set["spec"]["template"]["spec"]["containers"][0];

    info!("--- the pod's files: its Secrets, where the chart mounts them");
    let files = tempfile::tempdir()?;
    let mounted =
        |path: &str| path.replace("/etc/standin/", &format!("{}/", files.path().display()));
    for secret in of_kind(&objects, "Secret") {
        let name = text(&secret["metadata"]["name"]);
        let volume = if name.ends_with("-witness") {
            "witness"
        } else {
            "api"
        };
        let dir = files.path().join(volume);
        // As a kubelet lays a Secret volume out: a `..data` directory
        // beside the files, which carry the chart's defaultMode (0440).
        std::fs::create_dir_all(dir.join("..data"))?;
        for (key, value) in secret["data"].as_mapping().unwrap() {
            let decoded = Command::new("base64")
                .arg("-d")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(text(value).as_bytes())?;
                    child.wait_with_output()
                })?;
            let file = dir.join(text(key));
            std::fs::write(&file, decoded.stdout)?;
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o440))?;
        }
    }

    info!("--- the environment: the container's, then the Services' links");
    let pod_ip = "127.0.0.1";
    let mut env: Vec<(String, String)> = Vec::new();
    for variable in container["env"].as_sequence().unwrap() {
        let name = text(&variable["name"]);
        let value = if variable["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP" {
            pod_ip.to_owned()
        } else {
            mounted(&expand(&text(&variable["value"]), &env))
        };
        env.push((name, value));
    }
    for service in of_kind(&objects, "Service") {
        if service["spec"]["clusterIP"] == "None" {
            continue;
        }
        let ports: Vec<(Option<&str>, u64)> = service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str(), p["port"].as_u64().unwrap()))
            .collect();
        env.extend(service_links(
            &text(&service["metadata"]["name"]),
            "10.96.0.12",
            &ports,
        ));
    }
    // The etcd the chart's default endpoints name, and the API server.
    env.extend(service_links(
        "standin-etcd",
        "10.96.0.13",
        &[(Some("client"), 2379), (Some("peer"), 2380)],
    ));
    env.extend(service_links(
        "kubernetes",
        "10.96.0.1",
        &[(Some("https"), 443)],
    ));
    env.push(("HOSTNAME".into(), "standin-0".into()));
    assert!(
        env.iter().any(|(name, _)| name == "STANDIN_PORT"),
        "{env:?}"
    );

    info!("--- the image's entrypoint with the container's args");
    let args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let config = format!("{ROOT}/config/standin.yaml");
    let pod = |extra: &[String]| {
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .envs(env.iter().map(|(n, v)| (n, v)))
            .args(["--config", &config])
            .args(extra);
        command
    };
    let log = files.path().join("standin.log");
    let _node = KillOnDrop(
        pod(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let address = format!("{pod_ip}:{api}");
    let status = eventually("the pod to serve", Duration::from_secs(30), || async {
        let mut client = CoordinationClient::connect(format!("http://{address}"))
            .await
            .ok()?;
        let status = client.status(StatusRequest {}).await.ok()?.into_inner();
        status
            .roles
            .iter()
            .all(|r| r.state == "serving")
            .then_some(status)
    })
    .await;
    assert_eq!(status.address, address, "publishes the pod IP");
    assert_eq!(status.roles.len(), 2);
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.contains(&format!("witness=\"{pod_ip}:{witness}\"")),
        "publishes the pod IP's witness port: {logged}"
    );
    assert!(logged.contains("authenticated=true"), "{logged}");

    info!("--- its readiness and liveness probes pass, run as the kubelet runs them");
    for probe in ["readinessProbe", "livenessProbe"] {
        let command: Vec<String> = container[probe]["exec"]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(text)
            .collect();
        assert_eq!(command[0], "/usr/bin/standin");
        assert_eq!(command[2], "/etc/standin/standin.yaml");
        let probed = run(&mut pod(&command[3..]))?;
        info!(probe, "{}", String::from_utf8_lossy(&probed.stdout).trim());
    }
    Ok(())
}
