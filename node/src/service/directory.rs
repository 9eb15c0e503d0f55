//! The directory through the service: writes go to the controller leader; reads come from this
//! node's copy, caught up with the controller first where a stale answer would be wrong.

use std::time::Duration;

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
            let user = User {
                id: uuid::Uuid::now_v7().to_string(),
                display_name: "Administrator".into(),
                user_type: UserType::Agent,
                email: Some(email.clone()),
                password_hash: Some(hash.clone()),
                metadata_json: None,
                admin: true,
                created_at_ms: crate::retention::now_ms(),
                identities: Vec::new(),
            };
            let cmd = DirectoryCommand::CreateUser { user, actor: None };
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
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}
