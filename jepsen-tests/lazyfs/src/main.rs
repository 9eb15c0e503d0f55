//! `c4aj-lazyfs`: a FUSE passthrough filesystem that keeps, per file, how to undo every data
//! change since that file's last fsync, and undoes them all on command: a power cut.
//! See README.md.

mod control;
mod fs;
mod undo;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fuser::{Config, MountOption, Session};
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(
    name = "c4aj-lazyfs",
    about = "A FUSE filesystem that loses unfsynced writes on command"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount <backing-dir> at <mountpoint> and serve until SIGINT/SIGTERM or unmount.
    Mount {
        backing: PathBuf,
        mountpoint: PathBuf,
        /// Unix socket for the control commands (created once the mount is ready).
        #[arg(long)]
        control: PathBuf,
        /// Threads serving FUSE requests.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Do not pass fsync through to the backing filesystem (faster; only the modelled
        /// power cut is then survivable, not a real one of the host).
        #[arg(long)]
        no_backing_fsync: bool,
    },
    /// Revert every file to its last fsynced content (the mount's `cut` command).
    Cut {
        #[arg(long)]
        control: PathBuf,
    },
    /// Print the files with unsynced changes: pending-bytes synced-size current-size path.
    Stats {
        #[arg(long)]
        control: PathBuf,
    },
    /// Make every file's current content count as synced.
    SyncAll {
        #[arg(long)]
        control: PathBuf,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("c4aj-lazyfs: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Mount {
            backing,
            mountpoint,
            control,
            threads,
            no_backing_fsync,
        } => mount(backing, mountpoint, control, threads, !no_backing_fsync),
        Cmd::Cut { control } => ctl(&control, "cut"),
        Cmd::Stats { control } => ctl(&control, "stats"),
        Cmd::SyncAll { control } => ctl(&control, "sync-all"),
    }
}

fn ctl(path: &std::path::Path, command: &str) -> Result<()> {
    for line in control::request(path, command)? {
        println!("{line}");
    }
    if command != "stats" {
        println!("ok");
    }
    Ok(())
}

enum Event {
    Signal(Signal),
    Ended(std::io::Result<()>),
}

fn mount(
    backing: PathBuf,
    mountpoint: PathBuf,
    control_path: PathBuf,
    threads: usize,
    backing_fsync: bool,
) -> Result<()> {
    // Block the stop signals in every thread (threads inherit the mask); one thread waits for
    // them, so a signal never interrupts a FUSE request half-served.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    signals.thread_block().context("blocking signals")?;

    let shared = fs::Shared::new(&backing, backing_fsync)
        .with_context(|| format!("backing directory {}", backing.display()))?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("c4aj-lazyfs".into()),
        MountOption::Subtype("c4aj-lazyfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
    ];
    config.n_threads = Some(threads.max(1));
    let mut session = Session::new(fs::LazyFs(shared.clone()), &mountpoint, &config)
        .with_context(|| format!("mounting {}", mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    shared.set_notifier(session.notifier());

    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            let _ = tx2.send(Event::Ended(session.run()));
        })
        .context("spawning the session thread")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Ok(sig) = signals.wait() {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        })
        .context("spawning the signal thread")?;

    control::serve(&control_path, shared)?;
    eprintln!(
        "c4aj-lazyfs: {} mounted at {}, control {}",
        backing.display(),
        mountpoint.display(),
        control_path.display()
    );

    let result = match rx.recv() {
        Ok(Event::Signal(sig)) => {
            eprintln!("c4aj-lazyfs: {sig}, unmounting {}", mountpoint.display());
            if let Err(e) = unmounter.unmount() {
                // Busy (a process still has files open): detach it; the session ends when the
                // last user goes, or when this process exits.
                eprintln!("c4aj-lazyfs: unmount: {e}; detaching");
                let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Event::Ended(r)) => r.context("FUSE session"),
                _ => {
                    eprintln!("c4aj-lazyfs: session still busy after 5 s; exiting");
                    Ok(())
                }
            }
        }
        Ok(Event::Ended(r)) => {
            eprintln!("c4aj-lazyfs: {} was unmounted", mountpoint.display());
            r.context("FUSE session")
        }
        Err(_) => Ok(()),
    };
    let _ = std::fs::remove_file(&control_path);
    result
}
