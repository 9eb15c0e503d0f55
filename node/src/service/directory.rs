//! The directory through the service: writes go to the controller leader; reads come from this
//! node's copy, caught up with the controller first where a stale answer would be wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use rand::RngCore;

use chat4all_raft::sm::directory::{
    ApiKey, DirectoryCommand, DirectoryReader, DirectoryResponse, User, UserType,
};
use chat4all_raft::types::{ControllerCommand, ControllerResponse};
use chat4all_storage::StorageError;
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::error::ServiceError;

fn read_err(e: StorageError) -> ServiceError {
    ServiceError::Internal(format!("directory read: {e}"))
}

impl Service {
    /// Proposes a directory command and waits for its result.
    pub async fn directory_write(
        &self,
        cmd: DirectoryCommand,
    ) -> Result<DirectoryResponse, ServiceError> {
        match self
            .controller_write(ControllerCommand::Directory(cmd), 0)
            .await?
        {
            ControllerResponse::Directory(r) => Ok(r),
            other => Err(ServiceError::Internal(format!(
                "controller answered {other:?} to a directory command"
            ))),
        }
    }

    /// `read` of this node's directory; on a miss, read again after catching up with the
    /// controller (the row may have been made through another node a moment ago). For rows
    /// that are never removed, such as users and API keys, a local hit is current.
    async fn directory_hit_or_sync<T>(
        &self,
        read: impl Fn(&DirectoryReader) -> Result<Option<T>, StorageError>,
    ) -> Result<Option<T>, ServiceError> {
        let dir = self.controller().directory();
        if let Some(v) = read(&dir).map_err(read_err)? {
            return Ok(Some(v));
        }
        self.shared_synced_metadata().await?;
        read(&dir).map_err(read_err)
    }

    /// `read` of this node's directory as it is (what the controller has applied here): for
    /// workers and hot paths that tolerate a moment's staleness.
    pub fn directory_local<T>(
        &self,
        read: impl FnOnce(&DirectoryReader) -> Result<T, StorageError>,
    ) -> Result<T, ServiceError> {
        read(&self.controller().directory()).map_err(read_err)
    }

    /// `read` of the directory after catching up with the controller: it sees every change
    /// committed before the call (linearizable).
    pub async fn directory_synced<T>(
        &self,
        read: impl FnOnce(&DirectoryReader) -> Result<T, StorageError>,
    ) -> Result<T, ServiceError> {
        self.shared_synced_metadata().await?;
        read(&self.controller().directory()).map_err(read_err)
    }

    /// A user by id (see [`Service::directory_hit_or_sync`]).
    pub async fn user(&self, id: &str) -> Result<Option<User>, ServiceError> {
        self.directory_hit_or_sync(|d| d.user(id)).await
    }

    /// A user by (lower-cased) email.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, ServiceError> {
        self.directory_hit_or_sync(|d| d.user_by_email(email)).await
    }

    /// An API key by id (a revoked one is kept, marked revoked).
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, ServiceError> {
        self.directory_hit_or_sync(|d| d.api_key(id)).await
    }

    /// Creates the first admin from `CHAT4ALL_ADMIN_EMAIL` and `CHAT4ALL_ADMIN_PASSWORD`
    /// (or `_FILE`) unless a user with that email exists. Every node tries; the controller
    /// lets exactly one creation win. Retries while the cluster has no controller leader.
    pub async fn bootstrap_admin(
        &self,
        email: String,
        password: String,
        shutdown: CancellationToken,
    ) {
        let email = email.trim().to_lowercase();
        let hash = match crate::auth::hash_password(password).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("bootstrap admin: {e}");
                return;
            }
        };
        loop {
            let cmd = DirectoryCommand::CreateUser {
                user: admin_user(&email, hash.clone()),
                actor: None,
            };
            match self.directory_write(cmd).await {
                Ok(DirectoryResponse::User(u)) => {
                    tracing::info!(user_id = %u.id, %email, "bootstrap admin created");
                    return;
                }
                Ok(DirectoryResponse::EmailTaken { .. }) => {
                    tracing::info!(%email, "bootstrap admin exists already");
                    return;
                }
                Ok(other) => tracing::warn!("bootstrap admin: {other:?}; retrying"),
                Err(e) => tracing::debug!("bootstrap admin: {e}; retrying"),
            }
            if !pause(&shutdown).await {
                return;
            }
        }
    }

    /// For a node started without `CHAT4ALL_ADMIN_*`: when the cluster has never had an
    /// admin, creates [`GENERATED_ADMIN_EMAIL`] with a random password and writes that
    /// password to [`GENERATED_ADMIN_FILE`] in `data_dir` (mode 0600), never to the log.
    /// Every node may try; the controller lets one win, and only the winner keeps its file.
    pub async fn bootstrap_generated_admin(&self, data_dir: PathBuf, shutdown: CancellationToken) {
        // The usual case, on every restart: there is an admin.
        loop {
            match self.directory_hit_or_sync(|d| d.first_admin()).await {
                Ok(Some(_)) => return,
                Ok(None) => break,
                Err(e) => tracing::debug!("first admin: {e}; retrying"),
            }
            if !pause(&shutdown).await {
                return;
            }
        }
        let mut secret = [0u8; 18];
        rand::rng().fill_bytes(&mut secret);
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let hash = match crate::auth::hash_password(password.clone()).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("first admin: {e}");
                return;
            }
        };
        let user = admin_user(GENERATED_ADMIN_EMAIL, hash);
        // On disk before it can be in force: an admin whose password nobody has would leave
        // the cluster without one for good.
        let file = data_dir.join(GENERATED_ADMIN_FILE);
        if let Err(e) = write_private(&file, &password) {
            tracing::error!(file = %file.display(), "first admin: cannot write its password: {e}");
            return;
        }
        let made = loop {
            let cmd = DirectoryCommand::CreateFirstAdmin { user: user.clone() };
            match self.directory_write(cmd).await {
                Ok(DirectoryResponse::User(_)) => break true,
                // Made by an earlier try whose answer was lost.
                Ok(DirectoryResponse::AdminExists { user_id }) if user_id == user.id => break true,
                // Another node's, or one made since the check above.
                Ok(DirectoryResponse::AdminExists { .. }) => break false,
                Ok(other) => {
                    tracing::error!("first admin: {other:?}");
                    break false;
                }
                Err(e) => tracing::debug!("first admin: {e}; retrying"),
            }
            // (Shutting down with the outcome unknown keeps the file: it may be in force.)
            if !pause(&shutdown).await {
                return;
            }
        };
        if !made {
            let _ = std::fs::remove_file(&file);
            return;
        }
        tracing::warn!(
            user_id = %user.id,
            email = GENERATED_ADMIN_EMAIL,
            password_file = %file.display(),
            "no CHAT4ALL_ADMIN_EMAIL was set: created the first admin with a generated password, in password_file"
        );
    }
}

/// The email of the admin a cluster started without `CHAT4ALL_ADMIN_*` makes for itself.
pub const GENERATED_ADMIN_EMAIL: &str = "admin@chat4all.local";

/// The file, in the data directory of the node that made that admin, with its password.
pub const GENERATED_ADMIN_FILE: &str = "admin-password";

fn admin_user(email: &str, password_hash: String) -> User {
    User {
        id: uuid::Uuid::now_v7().to_string(),
        display_name: "Administrator".into(),
        user_type: UserType::Agent,
        email: Some(email.to_string()),
        password_hash: Some(password_hash),
        metadata_json: None,
        admin: true,
        created_at_ms: crate::retention::now_ms(),
        identities: Vec::new(),
    }
}

/// Writes `text` to `path`, readable by this user only, and syncs it.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Half a second before the next try; false when the node is shutting down.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(500)) => true,
    }
}
