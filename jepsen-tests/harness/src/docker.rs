//! The docker mode's pieces (`--hosts docker`): the image, built from our own binary as
//! `make image` (`docker/build-image.sh`) builds it; the compose file of the run; the compose
//! command; and the removal of whatever an earlier run left in the Docker engine.
//!
//! ```text
//!   host: c4aj-dbr 10.78.0.254 (the harness; the network c4aj-net's gateway)
//!        │ veth           │ veth           │ veth
//!   ┌────┴────┐      ┌────┴────┐      ┌────┴────┐
//!   │ c4aj-n1 │      │ c4aj-n2 │      │ c4aj-n3 │   containers of project c4aj-jepsen,
//!   │  eth0   │      │  eth0   │      │  eth0   │   10.78.0.K/24, no published ports
//!   │chat4all │      │chat4all │      │chat4all │   image c4aj-chat4all:<sha256 of the binary>
//!   └─────────┘      └─────────┘      └─────────┘
//!   <results>/c4aj-nodes.toml, certs/, data/nK bind-mounted
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{
    CLUSTER_FILE, CONTAINER_CERTS, CONTAINER_CONFIG, CONTAINER_DATA, DOCKER_SUBNET_PREFIX,
    HARNESS_HOST, certs_dir, data_dir,
};
use crate::hosts::{PREFIX, run};
use crate::schedule::NodeId;

/// The image's repository; the tag is the first 12 hex digits of the binary's SHA-256.
pub const IMAGE_REPOSITORY: &str = "c4aj-chat4all";
/// The compose project.
pub const PROJECT: &str = "c4aj-jepsen";
/// The compose network (and its Linux bridge, [`BRIDGE`]).
pub const NETWORK: &str = "c4aj-net";
/// The compose network's bridge on the host.
pub const BRIDGE: &str = "c4aj-dbr";
/// The compose file's name in the results folder.
pub const COMPOSE_FILE: &str = "c4aj-compose.yml";
/// The node's interface inside its container.
pub const CONTAINER_IFACE: &str = "eth0";

/// The `Dockerfile` of `docker/Dockerfile`, word for word but its comment.
const DOCKERFILE: &str = "# docker/Dockerfile, as the jepsen harness builds it (--hosts docker).
FROM scratch
COPY rootfs/ /
WORKDIR /var/lib/chat4all
EXPOSE 8080/tcp 7000/udp
ENTRYPOINT [\"/usr/local/bin/chat4all\"]
CMD [\"serve\"]
";

/// Node `id`'s container.
pub fn container(id: NodeId) -> String {
    format!("{PREFIX}n{id}")
}

/// Whether a `docker` command exists and its engine answers.
pub fn available() -> bool {
    run(&["docker", "version", "--format", "{{.Server.Version}}"]).is_ok()
}

/// The compose command that works here: `docker compose` (the plugin), else Debian's
/// `docker-compose` (v1).
pub fn compose_command() -> anyhow::Result<Vec<String>> {
    if run(&["docker", "compose", "version"]).is_ok() {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    if run(&["docker-compose", "version"]).is_ok() {
        return Ok(vec!["docker-compose".into()]);
    }
    bail!("neither `docker compose` nor `docker-compose` works on this machine")
}

/// The image for `bin`: `c4aj-chat4all:<first 12 hex digits of its SHA-256>`, reused if the
/// engine has it, else built as `docker/build-image.sh` builds `chat4all:local` (FROM scratch:
/// the binary, every shared library `ldd` lists at the same path, the NSS modules, `/etc/passwd`
/// with root, a `/tmp`) in a scratch context that is removed afterwards. Older tags of the
/// repository are removed then (when no container uses them).
pub fn image(bin: &Path) -> anyhow::Result<String> {
    let sum = run(&["sha256sum", &bin.to_string_lossy()])?;
    let digest: String = sum
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    if digest.len() != 12 {
        bail!("cannot read the SHA-256 of {}: {sum:?}", bin.display());
    }
    let tag = format!("{IMAGE_REPOSITORY}:{digest}");
    if run(&["docker", "image", "inspect", "--format", "{{.Id}}", &tag]).is_ok() {
        tracing::info!("docker: reusing image {tag}");
        return Ok(tag);
    }
    let context = std::env::temp_dir().join(format!("{PREFIX}image-{}", std::process::id()));
    let built = build(bin, &context, &tag);
    let _ = std::fs::remove_dir_all(&context);
    built?;
    if let Ok(tags) = run(&[
        "docker",
        "images",
        IMAGE_REPOSITORY,
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]) {
        for old in tags
            .lines()
            .map(str::trim)
            .filter(|t| *t != tag && !t.is_empty())
        {
            let _ = run(&["docker", "rmi", old]);
        }
    }
    tracing::info!("docker: built image {tag} from {}", bin.display());
    Ok(tag)
}

/// `docker/build-image.sh`'s steps, into `context`, tagged `tag`.
fn build(bin: &Path, context: &Path, tag: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(context);
    let rootfs = context.join("rootfs");
    for dir in ["usr/local/bin", "var/lib/chat4all", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    std::fs::copy(bin, rootfs.join("usr/local/bin/chat4all"))
        .with_context(|| format!("cannot copy {}", bin.display()))?;
    // Every library ldd resolves, at the same path, plus the dynamic loader.
    let ldd = run(&["ldd", &bin.to_string_lossy()])?;
    let mut libraries: Vec<&str> = ldd
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .collect();
    // Name resolution (build-image.sh adds them for the compose service names).
    libraries.extend([
        "/lib/x86_64-linux-gnu/libnss_dns.so.2",
        "/lib/x86_64-linux-gnu/libnss_files.so.2",
        "/lib/x86_64-linux-gnu/libresolv.so.2",
    ]);
    libraries.sort_unstable();
    libraries.dedup();
    for library in libraries {
        let from = Path::new(library);
        if !from.exists() {
            continue;
        }
        let to = rootfs.join(library.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Follows symbolic links, as `cp -L`.
        std::fs::copy(from, &to).with_context(|| format!("cannot copy {library}"))?;
    }
    std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/:/usr/local/bin/chat4all\n",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    }
    std::fs::write(context.join("Dockerfile"), DOCKERFILE)?;
    run(&[
        "docker",
        "build",
        "-q",
        "--label",
        "c4aj=jepsen",
        "-t",
        tag,
        &context.to_string_lossy(),
    ])
    .context("docker build")?;
    Ok(())
}

/// The compose file of a run in results folder `dir`: modeled on the top-level
/// `docker-compose.yml` (one service per node, the same image style, `serve --config …
/// --node-id K`), but on a private network with a fixed subnet and static addresses, no
/// published ports, no restart policy (the harness decides when a node runs), and the cluster
/// file, the certificates and the node's data directory bind-mounted from `dir`.
pub fn compose_file(dir: &Path, nodes: u32, image: &str, rust_log: &str) -> String {
    let [a, b, c] = DOCKER_SUBNET_PREFIX;
    let quoted = |p: PathBuf| serde_json::Value::String(p.to_string_lossy().into_owned());
    let mut out = format!(
        "# Generated by the jepsen harness (--hosts docker), after the top-level docker-compose.yml:
# one container per node on the private network {NETWORK} ({a}.{b}.{c}.0/24, the harness is the
# gateway {a}.{b}.{c}.{HARNESS_HOST}), no published ports, data bind-mounted from this folder.
#   docker-compose -p {PROJECT} -f {COMPOSE_FILE} up --no-start   (the harness starts each node)
version: \"2.4\"

x-node: &node
  image: {image}
  environment:
    RUST_LOG: {rust_log}
  restart: \"no\"

services:
",
        image = serde_json::Value::String(image.to_owned()),
        rust_log = serde_json::Value::String(rust_log.to_owned()),
    );
    let config = quoted(dir.join(CLUSTER_FILE));
    let certs = quoted(certs_dir(dir));
    for id in 1..=nodes {
        let data = quoted(data_dir(dir, id));
        // The JSON strings are YAML double-quoted scalars; the mount strings are joined inside.
        let mount = |host: &serde_json::Value, inside: &str, mode: &str| {
            let host = host.as_str().unwrap_or_default();
            serde_json::Value::String(format!("{host}:{inside}:{mode}"))
        };
        out.push_str(&format!(
            "  n{id}:
    <<: *node
    container_name: {container}
    hostname: n{id}
    command: [\"serve\", \"--config\", \"{CONTAINER_CONFIG}\", \"--node-id\", \"{id}\"]
    volumes:
      - {config}
      - {certs}
      - {data}
    networks:
      {NETWORK}:
        ipv4_address: {a}.{b}.{c}.{id}
",
            container = container(id),
            config = mount(&config, CONTAINER_CONFIG, "ro"),
            certs = mount(&certs, CONTAINER_CERTS, "rw"),
            data = mount(&data, CONTAINER_DATA, "rw"),
        ));
    }
    out.push_str(&format!(
        "
networks:
  {NETWORK}:
    name: {NETWORK}
    driver: bridge
    driver_opts:
      com.docker.network.bridge.name: {BRIDGE}
    ipam:
      config:
        - subnet: {a}.{b}.{c}.0/24
          gateway: {a}.{b}.{c}.{HARNESS_HOST}
"
    ));
    out
}

/// Removes every container, network and compose project named `c4aj-*` (not the images, which
/// later runs reuse). Does nothing without a working `docker`.
pub fn remove_leftovers() {
    if !available() {
        return;
    }
    let list = |args: &[&str]| -> Vec<String> {
        run(args)
            .map(|out| {
                out.lines()
                    .map(str::trim)
                    .filter(|name| name.starts_with(PREFIX))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut containers = list(&["docker", "ps", "-a", "--format", "{{.Names}}"]);
    let label = format!("label=com.docker.compose.project={PROJECT}");
    if let Ok(out) = run(&[
        "docker",
        "ps",
        "-a",
        "--filter",
        &label,
        "--format",
        "{{.Names}}",
    ]) {
        containers.extend(
            out.lines()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        );
    }
    containers.sort();
    containers.dedup();
    if !containers.is_empty() {
        let mut remove = vec!["docker", "rm", "-f", "-v"];
        remove.extend(containers.iter().map(String::as_str));
        if let Err(e) = run(&remove) {
            tracing::warn!("docker: cannot remove containers {containers:?}: {e:#}");
        }
    }
    for network in list(&["docker", "network", "ls", "--format", "{{.Name}}"]) {
        if let Err(e) = run(&["docker", "network", "rm", &network]) {
            tracing::warn!("docker: cannot remove network {network}: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compose_file_puts_each_node_on_its_address_with_its_data_from_the_results_folder() {
        let text = compose_file(
            Path::new("/r/run 1"),
            3,
            "c4aj-chat4all:0123456789ab",
            "info",
        );
        assert!(text.contains("image: \"c4aj-chat4all:0123456789ab\""));
        for id in 1..=3 {
            assert!(
                text.contains(&format!("container_name: c4aj-n{id}\n")),
                "{text}"
            );
            assert!(text.contains(&format!("ipv4_address: 10.78.0.{id}\n")));
            assert!(text.contains(&format!(
                "- \"/r/run 1/data/n{id}:/var/lib/chat4all/data:rw\"\n"
            )));
            assert!(text.contains(&format!(
                "\"serve\", \"--config\", \"/etc/chat4all/c4aj-nodes.toml\", \"--node-id\", \"{id}\"]"
            )));
        }
        assert!(text.contains("- \"/r/run 1/c4aj-nodes.toml:/etc/chat4all/c4aj-nodes.toml:ro\""));
        assert!(text.contains("- \"/r/run 1/certs:/certs:rw\""));
        assert!(text.contains("subnet: 10.78.0.0/24") && text.contains("gateway: 10.78.0.254"));
        assert!(text.contains("name: c4aj-net") && text.contains("bridge.name: c4aj-dbr"));
        assert!(!text.contains("ports:"), "no published ports");
        assert!(!text.contains("n4:"));
    }
}
