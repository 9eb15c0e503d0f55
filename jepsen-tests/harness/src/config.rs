//! The cluster file the harness gives every node: the format of the top-level `cluster.toml`,
//! with each node on its own namespace address and everything under the run's results folder.
//! It is named [`CLUSTER_FILE`], not `cluster.toml`: the nodes' command lines
//! (`chat4all serve --config <dir>/c4aj-nodes.toml --node-id K`) then match no
//! `pkill -f "cluster.toml --node-id"` aimed at another cluster on the same machine.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::schedule::NodeId;

/// The netns mode's subnet; node K is `10.77.0.K`, the harness (on the bridge) `10.77.0.254`.
pub const SUBNET_PREFIX: [u8; 3] = [10, 77, 0];
/// The docker mode's subnet (the compose network `c4aj-net`); node K is `10.78.0.K`, the
/// harness (the network's gateway, on the host) `10.78.0.254`.
pub const DOCKER_SUBNET_PREFIX: [u8; 3] = [10, 78, 0];
/// The harness's own address, on the bridge in the root namespace.
pub const HARNESS_HOST: u8 = 254;
/// Where the docker mode mounts the cluster file, the certificates and a node's data
/// directory inside its container (the image's working directory holds `data`, as in
/// `docker/cluster.toml`).
pub const CONTAINER_CONFIG: &str = "/etc/chat4all/c4aj-nodes.toml";
/// See [`CONTAINER_CONFIG`]: the results folder's `certs/`.
pub const CONTAINER_CERTS: &str = "/certs";
/// The certificate directory the nodes are given in containers: a directory *in* the mount
/// (as `docker/cluster.toml` does), because the first node makes it by renaming a filled
/// directory onto it, which a mount point refuses.
pub const CONTAINER_TLS_DIR: &str = "/certs/cluster";
/// See [`CONTAINER_CONFIG`].
pub const CONTAINER_DATA: &str = "/var/lib/chat4all/data";

/// The subnet of this run, set once at start ([`use_subnet`]); the netns mode's by default.
static SUBNET: std::sync::OnceLock<[u8; 3]> = std::sync::OnceLock::new();

/// Sets the subnet every address of this run is in (once, before anything is contacted);
/// `false` if it was set already to another one.
pub fn use_subnet(prefix: [u8; 3]) -> bool {
    *SUBNET.get_or_init(|| prefix) == prefix
}

/// The subnet's first three bytes.
pub fn subnet() -> [u8; 3] {
    *SUBNET.get().unwrap_or(&SUBNET_PREFIX)
}
/// Raft (QUIC, UDP) port of every node.
pub const RAFT_PORT: u16 = 7000;
/// REST API (TCP) port of every node.
pub const API_PORT: u16 = 8080;
/// The cluster file's name in the results folder. It must not end in `cluster.toml` (see the
/// module's documentation).
pub const CLUSTER_FILE: &str = "c4aj-nodes.toml";

/// Data directory of node `id` in results folder `dir`.
pub fn data_dir(dir: &Path, id: NodeId) -> PathBuf {
    dir.join("data").join(format!("n{id}"))
}

/// The certificate directory in results folder `dir`.
pub fn certs_dir(dir: &Path) -> PathBuf {
    dir.join("certs")
}

/// The address of node `id`.
pub fn node_ip(id: NodeId) -> Ipv4Addr {
    let [a, b, c] = subnet();
    Ipv4Addr::new(a, b, c, u8::try_from(id).unwrap_or(u8::MAX))
}

/// The harness's address on the bridge.
pub fn harness_ip() -> Ipv4Addr {
    let [a, b, c] = subnet();
    Ipv4Addr::new(a, b, c, HARNESS_HOST)
}

/// Settings of the generated cluster file.
#[derive(Clone, Debug)]
pub struct ClusterFileConfig {
    /// Number of nodes.
    pub nodes: u32,
    /// The results folder: data and certificates go below it.
    pub dir: PathBuf,
    /// `[limits] write_timeout_ms`: below the client's timeout, so that most stuck writes
    /// answer `OUTCOME_UNKNOWN` instead of timing out.
    pub write_timeout_ms: u64,
    /// `[retention] check_interval_ms`: short, so retention runs during faults.
    pub retention_check_ms: u64,
    /// `[raft]` heartbeat.
    pub heartbeat_ms: u64,
    /// `[raft]` shortest election timeout.
    pub election_timeout_min_ms: u64,
    /// `[raft]` longest election timeout.
    pub election_timeout_max_ms: u64,
    /// `[storage] memtable_mb`: 1 when a fault damages SST files, so that they exist after a
    /// few seconds of writes; the node's default (64 MB) otherwise.
    pub memtable_mb: Option<u64>,
    /// Paths as the docker mode's containers see them ([`CONTAINER_CERTS`],
    /// [`CONTAINER_DATA`], bind-mounted from the results folder) instead of the host's.
    pub in_container: bool,
}

impl ClusterFileConfig {
    /// The harness's defaults for `nodes` nodes under `dir` (Raft timing as the node's defaults).
    pub fn new(nodes: u32, dir: &Path) -> Self {
        ClusterFileConfig {
            nodes,
            dir: dir.to_path_buf(),
            write_timeout_ms: 4_000,
            retention_check_ms: 1_000,
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            memtable_mb: None,
            in_container: false,
        }
    }

    /// Data directory of node `id`, as the node sees it.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        if self.in_container {
            PathBuf::from(CONTAINER_DATA)
        } else {
            data_dir(&self.dir, id)
        }
    }

    /// The certificate directory (the first node to start fills it), as the nodes see it.
    pub fn certs_dir(&self) -> PathBuf {
        if self.in_container {
            PathBuf::from(CONTAINER_TLS_DIR)
        } else {
            certs_dir(&self.dir)
        }
    }

    /// The cluster file's text.
    pub fn render(&self) -> String {
        let mut out = String::from(if self.in_container {
            "# Generated by the jepsen harness: one node per container (c4aj-nK, --hosts docker).\n\n"
        } else {
            "# Generated by the jepsen harness: one node per network namespace (c4aj-nK).\n\n"
        });
        out.push_str(&format!(
            "[tls]\ndir = {}\nauto_generate = true\n\n",
            toml_string(&self.certs_dir().to_string_lossy())
        ));
        // The queue and subscribe workloads use the log API without credentials, as a Kafka
        // client on a listener without SASL; the chat workload signs in.
        out.push_str("[auth]\nlog_api = \"open\"\n\n");
        out.push_str(&format!(
            "[limits]\nwrite_timeout_ms = {}\n\n",
            self.write_timeout_ms
        ));
        out.push_str(&format!(
            "[retention]\ncheck_interval_ms = {}\n\n",
            self.retention_check_ms
        ));
        out.push_str(&format!(
            "[raft]\nheartbeat_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\n",
            self.heartbeat_ms, self.election_timeout_min_ms, self.election_timeout_max_ms
        ));
        // Explicit, as the corruption fault counts on it: every checksum read before joining.
        // A database open that does not finish in 5 s (+1 s per 4 MiB of WAL) is a refusal
        // (RocksDB can spin on a damaged WAL); well within the harness's REFUSAL_LIMIT.
        out.push_str("\n[storage]\nverify_on_start = true\nopen_timeout_ms = 5000\n");
        if let Some(mb) = self.memtable_mb {
            out.push_str(&format!("memtable_mb = {mb}\n"));
        }
        for id in 1..=self.nodes {
            let ip = node_ip(id);
            out.push_str(&format!(
                "\n[[nodes]]\nid = {id}\nraft_addr = \"{ip}:{RAFT_PORT}\"\napi_addr = \"{ip}:{API_PORT}\"\ndata_dir = {}\n",
                toml_string(&self.data_dir(id).to_string_lossy())
            ));
        }
        out
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_file_puts_each_node_on_its_namespace_address_and_data_under_the_results() {
        let dir = Path::new("/tmp/results/run \"1\"");
        let text = ClusterFileConfig::new(5, dir).render();
        let parsed: toml::Table = text.parse().expect("valid TOML");
        let nodes = parsed["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 5);
        for (i, node) in nodes.iter().enumerate() {
            let id = i as i64 + 1;
            assert_eq!(node["id"].as_integer(), Some(id));
            assert_eq!(
                node["raft_addr"].as_str(),
                Some(&*format!("10.77.0.{id}:7000"))
            );
            assert_eq!(
                node["api_addr"].as_str(),
                Some(&*format!("10.77.0.{id}:8080"))
            );
            assert_eq!(
                node["data_dir"].as_str(),
                Some(&*format!("/tmp/results/run \"1\"/data/n{id}")),
                "quotes survive escaping"
            );
        }
        assert_eq!(parsed["tls"]["auto_generate"].as_bool(), Some(true));
        assert_eq!(
            parsed["tls"]["dir"].as_str(),
            Some("/tmp/results/run \"1\"/certs")
        );
        assert_eq!(
            parsed["limits"]["write_timeout_ms"].as_integer(),
            Some(4000)
        );
        assert_eq!(
            parsed["retention"]["check_interval_ms"].as_integer(),
            Some(1000)
        );
        let raft = parsed["raft"].as_table().expect("raft");
        assert_eq!(raft["heartbeat_ms"].as_integer(), Some(100));
        assert!(
            raft["election_timeout_min_ms"].as_integer()
                < raft["election_timeout_max_ms"].as_integer()
        );
        // Only the sections the node knows (its config refuses unknown fields).
        let mut keys: Vec<&str> = parsed.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "auth",
                "limits",
                "nodes",
                "raft",
                "retention",
                "storage",
                "tls"
            ]
        );
        assert_eq!(parsed["storage"]["verify_on_start"].as_bool(), Some(true));
        assert_eq!(
            parsed["storage"]["open_timeout_ms"].as_integer(),
            Some(5000)
        );
        assert!(parsed["storage"].get("memtable_mb").is_none());
        assert_eq!(parsed["auth"]["log_api"].as_str(), Some("open"));
    }

    #[test]
    fn damaging_runs_get_small_memtables_and_the_file_name_escapes_cluster_toml_kills() {
        let mut config = ClusterFileConfig::new(3, Path::new("/r"));
        config.memtable_mb = Some(1);
        let parsed: toml::Table = config.render().parse().expect("valid TOML");
        assert_eq!(parsed["storage"]["memtable_mb"].as_integer(), Some(1));
        assert_eq!(config.data_dir(2), Path::new("/r/data/n2"));
        // What `pkill -f "cluster.toml --node-id"` elsewhere would match.
        let command_line = format!("chat4all serve --config /r/{CLUSTER_FILE} --node-id 2");
        assert!(!command_line.contains("cluster.toml"));
        assert!(CLUSTER_FILE.starts_with("c4aj-"));
    }

    #[test]
    fn in_containers_the_paths_are_the_mounts_and_the_rest_is_the_same() {
        let mut config = ClusterFileConfig::new(3, Path::new("/r"));
        config.in_container = true;
        let parsed: toml::Table = config.render().parse().expect("valid TOML");
        assert_eq!(parsed["tls"]["dir"].as_str(), Some("/certs/cluster"));
        for node in parsed["nodes"].as_array().expect("nodes") {
            assert_eq!(node["data_dir"].as_str(), Some(CONTAINER_DATA));
        }
        assert_eq!(
            parsed["limits"]["write_timeout_ms"].as_integer(),
            Some(4000)
        );
        assert!(CONTAINER_CONFIG.ends_with(CLUSTER_FILE));
    }

    #[test]
    fn addresses_stay_in_the_harness_subnet() {
        assert_eq!(node_ip(3), Ipv4Addr::new(10, 77, 0, 3));
        assert_eq!(harness_ip(), Ipv4Addr::new(10, 77, 0, 254));
    }
}
