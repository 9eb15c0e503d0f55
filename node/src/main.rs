//! `chat4all`: one binary, identical nodes. `serve` runs a node; `certs` makes the cluster CA
//! and node certificates; `bench` measures a running cluster.
//!
//! `serve` reads top-down: configuration, telemetry, storage, Raft groups and transport,
//! workers, REST.

mod api;
mod auth;
mod bench;
mod channels;
mod chat;
mod config;
mod consumer;
mod error;
mod groups;
mod manager;
mod metrics;
mod partitioner;
mod retention;
mod service;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chat4all_raft::certs::{TlsFiles, ensure_cluster_certs, generate_cluster_certs};
use chat4all_raft::groups::{Groups, GroupsHandler, raft_config};
use chat4all_raft::network::resolve;
use chat4all_raft::transport::{DEFAULT_MAX_MESSAGE_BYTES, Transport, TransportConfig};
use chat4all_raft::types::NodeId;
use chat4all_storage::{Db, DbConfig};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::manager::PartitionManagerWorker;
use crate::metrics::Metrics;
use crate::retention::RetentionWorker;
use crate::service::{ForwardHandlerImpl, Service};

/// glibc's malloc was about 13 % of a node's CPU under produce load (perf, 256 in flight):
/// every request allocates its JSON, records, entries and replies.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "chat4all",
    version,
    about = "Chat4All: replicated partition logs for unified messaging"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a node. Without --config: a single-node cluster, data in ./data, API on 127.0.0.1:8080.
    Serve(ServeArgs),
    /// Writes a cluster CA and node certificates (ca.pem, node-<id>.pem, node-<id>.key).
    Certs(CertsArgs),
    /// Benchmarks a running cluster.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The cluster file (the same on every node).
    #[arg(long, env = "CHAT4ALL_CONFIG")]
    config: Option<PathBuf>,
    /// Which node of the cluster file this is.
    #[arg(long, env = "CHAT4ALL_NODE_ID")]
    node_id: Option<NodeId>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "CHAT4ALL_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Output directory.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Node ids to make certificates for, e.g. 1,2,3 (default: the nodes of --config).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<NodeId>,
    /// Take the node ids from this cluster file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One TLS provider for the whole process (quinn and reqwest both use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Serve(args) => runtime.block_on(serve(args)),
        Cmd::Certs(args) => certs(args),
        Cmd::Bench(cmd) => runtime.block_on(bench::run(cmd)),
    }
}

fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let mut nodes = args.nodes;
    if let Some(path) = &args.config {
        nodes.extend(ClusterConfig::load(path)?.nodes.iter().map(|n| n.id));
    }
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        bail!("name the nodes with --nodes 1,2,3 or --config cluster.toml");
    }
    if args.dir.join("ca.pem").exists() && !args.force {
        bail!(
            "{} already has a CA; use --force to replace it (every node then needs the new files)",
            args.dir.display()
        );
    }
    generate_cluster_certs(&args.dir, &nodes)?;
    println!(
        "wrote a cluster CA and certificates for nodes {nodes:?} to {}",
        args.dir.display()
    );
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,quinn=warn"));
    // Colours only for a terminal: a log file or `docker logs` should not fill with escapes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Configuration.
    let mut config = match &args.config {
        Some(path) => ClusterConfig::load(path)?,
        None => ClusterConfig::single_node(),
    };
    let node_id = match args.node_id {
        Some(id) => id,
        None if config.nodes.len() == 1 => config.nodes[0].id,
        None => bail!(
            "this cluster has several nodes: say which one this is with --node-id or CHAT4ALL_NODE_ID"
        ),
    };
    config.apply_env(node_id, &|k| std::env::var(k).ok())?;
    let me = config.node(node_id)?.clone();

    // Telemetry.
    init_tracing(args.log_format);
    let metrics = Metrics::new()?;
    tracing::info!(node_id, api = %me.api_addr, raft = %me.raft_addr, data = %me.data_dir.display(), "starting");
    tokio::spawn(crate::metrics::watch_runtime(metrics.clone()));

    // Storage.
    std::fs::create_dir_all(&me.data_dir)
        .with_context(|| format!("create {}", me.data_dir.display()))?;
    let db = open_bounded(
        DbConfig {
            path: me.data_dir.join("db"),
            memtable_bytes: config.storage.memtable_mb.map(|mb| mb << 20),
            max_wal_bytes: config.storage.max_wal_mb << 20,
        },
        config.storage.open_timeout_ms,
    )
    .await
    .with_context(|| {
        format!(
            "open the database in {} (damaged files are refused, never repaired silently; \
             README: \"A node with damaged data\")",
            me.data_dir.display()
        )
    })?;
    if config.storage.verify_on_start {
        let started = std::time::Instant::now();
        let check = db.clone();
        let seen = tokio::task::spawn_blocking(move || check.verify())
            .await
            .context("verify task")?
            .with_context(|| {
                format!(
                    "the data in {} is damaged: this node refuses to serve or vote with it \
                     (README: \"A node with damaged data\")",
                    me.data_dir.display()
                )
            })?;
        tracing::info!(
            keys = seen.keys,
            bytes = seen.bytes,
            ms = started.elapsed().as_millis() as u64,
            "verified every stored checksum"
        );
    }

    // Raft groups and the transport that connects them.
    let shutdown = CancellationToken::new();
    let groups = Groups::new(
        node_id,
        db.clone(),
        raft_config(config.raft.settings())?,
        Some(metrics.clone()),
    );
    let transport = if config.nodes.len() > 1 {
        let tls = config
            .tls
            .clone()
            .context("[tls] is required for several nodes")?;
        let ids: Vec<NodeId> = config.nodes.iter().map(|n| n.id).collect();
        if tls.auto_generate && ensure_cluster_certs(&tls.dir, &ids)? {
            tracing::info!(dir = %tls.dir.display(), "generated cluster certificates (tls.auto_generate)");
        }
        let bind = resolve(me.raft_bind.as_deref().unwrap_or(&me.raft_addr))
            .await
            .context("raft bind address")?;
        let tconfig = TransportConfig {
            bind,
            tls: TlsFiles::for_node(&tls.dir, node_id),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        };
        let t = Transport::bind(
            &tconfig,
            Arc::new(GroupsHandler(groups.clone())),
            shutdown.clone(),
        )
        .await?;
        groups.set_transport(t.clone());
        Some(t)
    } else {
        None
    };
    let controller_group = groups.start_controller(config.members()).await?;
    let chat4all_raft::groups::GroupState::Controller(controller) = controller_group.state.clone()
    else {
        bail!("group 0 is not the controller");
    };
    let service = Service::new(
        node_id,
        &config,
        groups.clone(),
        controller.clone(),
        auth::Auth::new(
            config.auth.clone(),
            secret_from_env("CHAT4ALL_JWT_SECRET")?.map(String::into_bytes),
        ),
        metrics,
    );
    groups.set_forward_handler(Arc::new(ForwardHandlerImpl(Arc::downgrade(&service))));

    // Workers.
    let manager = PartitionManagerWorker {
        groups: groups.clone(),
        controller: controller.clone(),
        members: config.members(),
    };
    let manager = tokio::spawn(manager.run(shutdown.clone()));
    let retention = RetentionWorker {
        groups: groups.clone(),
        controller,
        db,
        interval: Duration::from_millis(config.retention.check_interval_ms.max(10)),
        compacted_at: Default::default(),
    };
    let retention = tokio::spawn(retention.run(shutdown.clone()));
    let sweeper = tokio::spawn(service.clone().run_group_sweeper(shutdown.clone()));
    let router = config
        .chat
        .router
        .then(|| tokio::spawn(workers::router::run(service.clone(), shutdown.clone())));
    // Connectors: a delivery worker per channel, and the inbound worker.
    let delivery = tokio::spawn(workers::delivery::run(service.clone(), shutdown.clone()));
    let inbound = tokio::spawn(workers::inbound::run(service.clone(), shutdown.clone()));
    let bootstrap = match (
        env_set("CHAT4ALL_ADMIN_EMAIL"),
        secret_from_env("CHAT4ALL_ADMIN_PASSWORD")?,
    ) {
        (Some(email), Some(password)) => {
            let svc = service.clone();
            let token = shutdown.clone();
            Some(tokio::spawn(async move {
                svc.bootstrap_admin(email, password, token).await
            }))
        }
        (None, None) => {
            let svc = service.clone();
            let token = shutdown.clone();
            let data_dir = me.data_dir.clone();
            Some(tokio::spawn(async move {
                svc.bootstrap_generated_admin(data_dir, token).await
            }))
        }
        _ => bail!(
            "set both CHAT4ALL_ADMIN_EMAIL and CHAT4ALL_ADMIN_PASSWORD (or _FILE), or neither"
        ),
    };
    let copy_workers: Vec<_> = config
        .workers
        .copy
        .iter()
        .map(|c| {
            let worker = workers::copy::CopyWorker {
                service: service.clone(),
                config: c.clone(),
            };
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect();

    // REST.
    let api_bind: SocketAddr = resolve(me.api_bind.as_deref().unwrap_or(&me.api_addr))
        .await
        .context("api bind address")?;
    let listener = tokio::net::TcpListener::bind(api_bind)
        .await
        .with_context(|| format!("bind the API on {api_bind}"))?;
    tracing::info!(node_id, %api_bind, "API listening");
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal_token.cancel();
    });
    let token = shutdown.clone();
    axum::serve(listener, api::router(service))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await?;

    // Clean shutdown: workers, then Raft groups, then the transport.
    shutdown.cancel();
    let _ = tokio::join!(manager, retention, sweeper);
    if let Some(b) = bootstrap {
        let _ = b.await;
    }
    if let Some(r) = router {
        let _ = r.await;
    }
    let _ = tokio::join!(delivery, inbound);
    futures::future::join_all(copy_workers).await;
    groups.shutdown().await;
    if let Some(t) = transport {
        t.close().await;
    }
    tracing::info!(node_id, "stopped");
    Ok(())
}

/// A secret from `NAME`, or from the file `NAME_FILE` names (trailing newline dropped).
fn secret_from_env(name: &str) -> anyhow::Result<Option<String>> {
    if let Some(v) = env_set(name) {
        return Ok(Some(v));
    }
    let file_var = format!("{name}_FILE");
    match env_set(&file_var) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{file_var}: cannot read {path}"))?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
        }
        None => Ok(None),
    }
}

/// An environment variable that is set and not empty (compose files pass `${X:-}` through as
/// an empty value).
fn env_set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Opens the database on a thread of its own and gives up after `base_ms` plus 1 s per 4 MiB
/// of write-ahead log: RocksDB 11.8 can spin forever replaying a WAL that had a piece cut out
/// of its middle. Giving up ends the process (the stuck thread with it): the node refuses to
/// start, as for any other damage, instead of hanging.
async fn open_bounded(config: DbConfig, base_ms: u64) -> anyhow::Result<Db> {
    let wal_bytes: u64 = std::fs::read_dir(&config.path)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let bound = Duration::from_millis(base_ms) + Duration::from_secs(wal_bytes / (4 << 20));
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("db-open".into())
        .spawn(move || {
            let _ = tx.send(Db::open(&config));
        })
        .context("spawn the database open thread")?;
    match tokio::time::timeout(bound, rx).await {
        Ok(Ok(opened)) => Ok(opened?),
        Ok(Err(_)) => bail!("the database open thread ended without an answer"),
        Err(_) => bail!(
            "opening the database did not finish in {} ms ({} bytes of write-ahead log to \
             replay): RocksDB is most likely stuck on a damaged log, so the data is damaged \
             ([storage] open_timeout_ms)",
            bound.as_millis(),
            wal_bytes
        ),
    }
}
