//! The control channel: a Unix socket speaking one command per line.
//!
//! | command | reply |
//! |---|---|
//! | `cut` | `ok` once every file is back to its last fsynced content |
//! | `stats` | one line per file with unsynced changes, `<pending-bytes> <synced-size> <current-size> <path>`, then `ok` |
//! | `sync-all` | `ok` once every file's current content counts as synced |
//! | anything else | `error <message>` |

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::fs::Shared;

/// Binds the socket (replacing a stale one) and serves it on a thread of its own.
pub fn serve(path: &Path, shared: Arc<Shared>) -> Result<()> {
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale control socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = session(c, &shared) {
                            eprintln!("c4aj-lazyfs: control connection: {e:#}");
                        }
                    }
                    Err(e) => eprintln!("c4aj-lazyfs: control accept: {e}"),
                }
            }
        })
        .context("spawning the control thread")?;
    Ok(())
}

fn session(conn: UnixStream, shared: &Shared) -> Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let reply = match line.trim() {
            "" => continue,
            "cut" => match shared.cut() {
                Ok(n) => {
                    eprintln!("c4aj-lazyfs: cut: reverted {n} files to their last fsync");
                    "ok\n".to_string()
                }
                Err(e) => format!("error cut: {e}\n"),
            },
            "sync-all" => {
                let n = shared.sync_all();
                eprintln!("c4aj-lazyfs: sync-all: {n} files now count as synced");
                "ok\n".to_string()
            }
            "stats" => {
                let mut s = String::new();
                for f in shared.stats() {
                    s.push_str(&format!(
                        "{} {} {} {}\n",
                        f.pending_bytes,
                        f.synced_size,
                        f.current_size,
                        f.path.display()
                    ));
                }
                s.push_str("ok\n");
                s
            }
            other => format!("error unknown command {other:?} (cut, stats, sync-all)\n"),
        };
        out.write_all(reply.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

/// Sends one command and returns the reply's lines before `ok`; an `error` reply is an error.
pub fn request(path: &Path, command: &str) -> Result<Vec<String>> {
    let mut conn = UnixStream::connect(path)
        .with_context(|| format!("connecting to control socket {}", path.display()))?;
    conn.write_all(format!("{command}\n").as_bytes())?;
    let mut lines = Vec::new();
    for line in BufReader::new(conn).lines() {
        let line = line?;
        if line == "ok" {
            return Ok(lines);
        }
        if let Some(msg) = line.strip_prefix("error") {
            bail!("{command}: {}", msg.trim());
        }
        lines.push(line);
    }
    bail!("{command}: the control socket closed before replying ok")
}
