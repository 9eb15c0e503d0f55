//! Channels (one bot, one WhatsApp number, one Instagram account each) and the external
//! contacts that reach us through them. Both live in the directory, so every node knows every
//! channel from local state, and a contact's first messages on two nodes at once still make
//! one user.

use chat4all_storage::StorageError;
use serde::{Deserialize, Serialize};

use super::{
    AuditAction, AuditEntry, DirectoryCounters, DirectoryReader, DirectoryResponse, Identity,
    Platform, RowTxn, User, identity_key, prefix_range, row_key, user_key,
};
use crate::types::RaftStorageError;

const CHANNEL: &[u8] = b"n/";

fn channel_key(name: &str) -> Vec<u8> {
    row_key(CHANNEL, &[name.as_bytes()])
}

/// A configured channel. Its secrets are stored as given: a value, or a reference
/// (`env:NAME`, `file:PATH`) each node resolves itself, which keeps the value itself out of
/// the replicated state. The API never returns them.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct Channel {
    /// The channel's name (`[a-z0-9_-]`, unique): in webhook URLs and consumer group names.
    pub name: String,
    /// The platform.
    pub platform: Platform,
    /// Credential fields (`bot_token`, `access_token`, `phone_number_id`, `ig_id`), by name.
    pub credentials: Vec<(String, String)>,
    /// Telegram's webhook `secret_token`, or the Meta app secret that signs webhooks.
    pub webhook_secret: Option<String>,
    /// Meta's `hub.verify_token`.
    pub verify_token: Option<String>,
    /// Users who join every conversation the channel opens for a new contact.
    pub agents: Vec<String>,
    /// WhatsApp: the approved template sent instead of free text outside the 24-hour window.
    pub template: Option<String>,
    /// The platform's id of the account, as checked at creation.
    pub account_id: String,
    /// The account's name, when the platform gave one.
    pub account_name: Option<String>,
    /// When it was created, ms since the epoch.
    pub created_at_ms: i64,
    /// Who created it.
    pub created_by: Option<String>,
}

// Secrets never reach a log line through `{:?}`.
impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("platform", &self.platform)
            .field(
                "credentials",
                &self.credentials.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("agents", &self.agents)
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

impl DirectoryReader {
    /// A channel by name.
    pub fn channel(&self, name: &str) -> Result<Option<Channel>, StorageError> {
        self.get(&channel_key(name))
    }

    /// Every channel, by name.
    pub fn channels(&self) -> Result<Vec<Channel>, StorageError> {
        let (start, end) = prefix_range(row_key(CHANNEL, &[]));
        Ok(self
            .db
            .scan::<Channel>(chat4all_storage::Cf::DirectoryRow, &start, &end, usize::MAX)?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }
}

fn audit(
    entity_id: &str,
    at_ms: i64,
    action: AuditAction,
    actor: Option<String>,
    platform: Platform,
    subject: &str,
) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at_ms,
        entity_id: entity_id.to_string(),
        action,
        actor,
        platform: Some(platform),
        subject: Some(subject.to_string()),
    }
}

impl DirectoryCounters {
    pub(super) fn put_channel(
        &mut self,
        txn: &mut RowTxn<'_>,
        channel: Channel,
    ) -> Result<DirectoryResponse, RaftStorageError> {
        let k = channel_key(&channel.name);
        if let Some(c) = txn.get::<Channel>(&k)? {
            return Ok(DirectoryResponse::ChannelExists(Box::new(c)));
        }
        txn.put(k, &channel)?;
        let e = audit(
            &format!("channel:{}", channel.name),
            channel.created_at_ms,
            AuditAction::ChannelCreated,
            channel.created_by.clone(),
            channel.platform,
            &channel.account_id,
        );
        self.audit(txn, e)?;
        Ok(DirectoryResponse::Channel(Box::new(channel)))
    }

    pub(super) fn delete_channel(
        &mut self,
        txn: &mut RowTxn<'_>,
        name: String,
        at_ms: i64,
        actor: Option<String>,
    ) -> Result<DirectoryResponse, RaftStorageError> {
        let k = channel_key(&name);
        let Some(c) = txn.get::<Channel>(&k)? else {
            return Ok(DirectoryResponse::UnknownChannel);
        };
        txn.delete(k);
        let e = audit(
            &format!("channel:{name}"),
            at_ms,
            AuditAction::ChannelDeleted,
            actor,
            c.platform,
            &c.account_id,
        );
        self.audit(txn, e)?;
        Ok(DirectoryResponse::Channel(Box::new(c)))
    }

    /// The user of an external contact: the identity's owner if it is linked, else `user`
    /// created now with the identity linked. One command, so two nodes racing on a contact's
    /// first messages make one user.
    pub(super) fn ensure_contact(
        &mut self,
        txn: &mut RowTxn<'_>,
        mut user: User,
        platform: Platform,
        platform_user_id: String,
    ) -> Result<DirectoryResponse, RaftStorageError> {
        let ik = identity_key(platform, &platform_user_id);
        if let Some(owner) = txn.get::<String>(&ik)? {
            return Ok(match txn.get::<User>(&user_key(&owner))? {
                Some(u) => DirectoryResponse::User(u),
                None => DirectoryResponse::UnknownUser,
            });
        }
        // The derived id exists but the identity is free: an administrator unlinked it. The
        // contact wrote again, so it is theirs again (a replayed event must not be stuck).
        if let Some(mut existing) = txn.get::<User>(&user_key(&user.id))? {
            let at = user.created_at_ms;
            existing.identities.push(Identity {
                platform,
                platform_user_id: platform_user_id.clone(),
                linked_at_ms: at,
            });
            txn.put(ik, &existing.id)?;
            txn.put(user_key(&existing.id), &existing)?;
            let linked = audit(
                &existing.id,
                at,
                AuditAction::IdentityLinked,
                None,
                platform,
                &platform_user_id,
            );
            self.audit(txn, linked)?;
            return Ok(DirectoryResponse::User(existing));
        }
        let at = user.created_at_ms;
        user.email = None;
        user.password_hash = None;
        user.admin = false;
        user.identities = vec![Identity {
            platform,
            platform_user_id: platform_user_id.clone(),
            linked_at_ms: at,
        }];
        txn.put(ik, &user.id)?;
        txn.put(user_key(&user.id), &user)?;
        let mut created = audit(&user.id, at, AuditAction::UserCreated, None, platform, "");
        created.platform = None;
        created.subject = None;
        self.audit(txn, created)?;
        let linked = audit(
            &user.id,
            at,
            AuditAction::IdentityLinked,
            None,
            platform,
            &platform_user_id,
        );
        self.audit(txn, linked)?;
        Ok(DirectoryResponse::User(user))
    }
}
