//! Making the hosts and removing them: the bridge, the namespaces with their addresses and the
//! FORWARD rule (netns mode), or the image, the compose file and the containers (docker mode);
//! the teardown at the end of a run, and the removal of what an interrupted run left.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::namespace::run_in_netns;
use super::powercut::remove_lazyfs_mounts;
use super::process::kill_container;
use super::{
    BRIDGE, Backend, Hosts, HostsMode, PREFIX, inner_veth, netns, node_log_filter, outer_veth, run,
};
use crate::config::{harness_ip, node_ip};
use crate::docker;

/// The root namespace's FORWARD rule that lets bridged traffic between the namespaces through
/// when `bridge-nf-call-iptables` sends it through a DROP policy (Docker sets one).
const FORWARD_RULE: &[&str] = &[
    "FORWARD",
    "-i",
    BRIDGE,
    "-o",
    BRIDGE,
    "-m",
    "comment",
    "--comment",
    "c4aj-",
    "-j",
    "ACCEPT",
];

impl Hosts {
    /// Removes every `c4aj-*` container and Docker network (if there is a Docker engine),
    /// namespace (killing what runs in it), link and rule.
    pub fn remove_leftovers() {
        docker::remove_leftovers();
        remove_lazyfs_mounts();
        if let Ok(list) = run(&["ip", "netns", "list"]) {
            for ns in list
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|ns| ns.starts_with(PREFIX))
            {
                if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
                    for pid in pids
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
                let _ = run(&["ip", "netns", "del", ns]);
            }
        }
        if let Ok(links) = run(&["ip", "-o", "link", "show"]) {
            for link in links
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|name| name.trim().split('@').next().unwrap_or("").to_owned())
                .filter(|name| name.starts_with(PREFIX))
            {
                let _ = run(&["ip", "link", "del", &link]);
            }
        }
        let mut delete = vec!["iptables", "-D"];
        delete.extend_from_slice(FORWARD_RULE);
        // One rule per earlier run at most; bounded anyway.
        for _ in 0..8 {
            if run(&delete).is_err() {
                break;
            }
        }
    }

    /// Creates the hosts of `mode`, nothing started yet: the bridge and `nodes` namespaces with
    /// their addresses; or the image, the compose file (in `dir`) and the containers.
    pub fn create(
        mode: HostsMode,
        nodes: u32,
        bin: &Path,
        config: &Path,
        dir: &Path,
        lazyfs: Option<&Path>,
    ) -> anyhow::Result<Hosts> {
        Hosts::remove_leftovers();
        if lazyfs.is_some() && mode != HostsMode::Netns {
            bail!(
                "the powercut nemesis needs --hosts netns (c4aj-lazyfs mounts in the root namespace)"
            );
        }
        let backend = match mode {
            HostsMode::Netns => Backend::Netns,
            HostsMode::Docker => {
                if !docker::available() {
                    bail!("--hosts docker: no Docker engine answers `docker version` here");
                }
                Backend::Docker {
                    compose: docker::compose_command()?,
                    file: dir.join(docker::COMPOSE_FILE),
                }
            }
        };
        let hosts = Hosts {
            nodes,
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
            dir: dir.to_path_buf(),
            backend,
            children: Mutex::new(BTreeMap::new()),
            network: Mutex::new(BTreeMap::new()),
            unexpected: Mutex::new(Vec::new()),
            expected: Mutex::new(BTreeMap::new()),
            lazyfs: lazyfs.map(Path::to_path_buf),
            shims: Mutex::new(BTreeMap::new()),
            torn_down: AtomicBool::new(false),
            env: Mutex::new(Vec::new()),
        };
        if let Backend::Docker { compose, file } = &hosts.backend {
            let image = docker::image(bin)?;
            std::fs::write(
                file,
                docker::compose_file(dir, nodes, &image, &node_log_filter()),
            )?;
            std::fs::create_dir_all(crate::config::certs_dir(dir))?;
            for id in 1..=nodes {
                std::fs::create_dir_all(hosts.data_dir(id))?;
            }
            let file = file.to_string_lossy();
            let mut up: Vec<&str> = compose.iter().map(String::as_str).collect();
            up.extend(["-p", docker::PROJECT, "-f", &file, "up", "--no-start"]);
            run(&up)?;
            return Ok(hosts);
        }
        let harness = format!("{}/24", harness_ip());
        run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        run(&["ip", "addr", "add", &harness, "dev", BRIDGE])?;
        run(&["ip", "link", "set", BRIDGE, "up"])?;
        let mut insert = vec!["iptables", "-I"];
        insert.extend_from_slice(FORWARD_RULE);
        run(&insert)?;
        for id in 1..=nodes {
            let (ns, inner, outer) = (netns(id), inner_veth(id), outer_veth(id));
            let address = format!("{}/24", node_ip(id));
            run(&["ip", "netns", "add", &ns])?;
            run_in_netns(id, &["ip", "link", "set", "lo", "up"])?;
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &outer, "master", BRIDGE])?;
            run(&["ip", "link", "set", &outer, "up"])?;
            run_in_netns(id, &["ip", "addr", "add", &address, "dev", &inner])?;
            run_in_netns(id, &["ip", "link", "set", &inner, "up"])?;
        }
        if hosts.lazyfs.is_some() {
            for id in 1..=nodes {
                hosts.mount_lazyfs(id)?;
            }
        }
        Ok(hosts)
    }

    /// Kills every node and removes the namespaces, links and rules; in docker mode the
    /// containers (`compose down -v`) and the network too. Idempotent.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut children = self.lock();
        let nodes = std::mem::take(&mut *children);
        drop(children);
        for (id, mut node) in nodes {
            if let Backend::Docker { .. } = self.backend {
                if let Err(e) = kill_container(id, node) {
                    tracing::warn!("teardown: {e:#}");
                }
            } else {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
        self.stop_shims();
        if let Backend::Docker { compose, file } = &self.backend {
            let file = file.to_string_lossy();
            let mut down: Vec<&str> = compose.iter().map(String::as_str).collect();
            down.extend([
                "-p",
                docker::PROJECT,
                "-f",
                &file,
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "0",
            ]);
            if let Err(e) = run(&down) {
                tracing::warn!("teardown: {e:#}");
            }
        }
        Hosts::remove_leftovers();
    }
}
