//! The directory: users, their external identities, API keys and the audit log of identity
//! changes. It belongs to the controller group, so every node holds a copy and authenticates
//! a request from local state, but unlike the rest of the controller state it is stored row by
//! row in RocksDB (column family `dirkey_dirrow`, inside the controller group's key range):
//! it grows with the user base, and rewriting it whole on every controller apply would cost
//! O(users) per topic creation.
//!
//! Every rule that two racing requests could break (one email per user, one owner per
//! external identity) is decided here, in the apply, so every replica agrees on the winner.

use chat4all_storage::{Cf, Db, StorageError, keys};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::RowTxn;
use crate::types::{GroupId, RaftStorageError};

mod channels;
pub use channels::Channel;

/// Whether a user is a support agent or a customer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserType {
    /// A support agent.
    Agent,
    /// A customer.
    Customer,
}

/// A messaging platform an identity lives on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Platform {
    /// WhatsApp Business Cloud API.
    Whatsapp,
    /// Telegram Bot API.
    Telegram,
    /// Instagram Messaging API.
    Instagram,
}

impl Platform {
    /// The name used in URLs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Whatsapp => "WHATSAPP",
            Platform::Telegram => "TELEGRAM",
            Platform::Instagram => "INSTAGRAM",
        }
    }

    /// Parses the JSON/URL name, case-insensitively.
    pub fn parse(s: &str) -> Option<Platform> {
        match s.to_ascii_uppercase().as_str() {
            "WHATSAPP" => Some(Platform::Whatsapp),
            "TELEGRAM" => Some(Platform::Telegram),
            "INSTAGRAM" => Some(Platform::Instagram),
            _ => None,
        }
    }
}

/// An external identity linked to a user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The platform.
    pub platform: Platform,
    /// The user's id on that platform (phone number, chat id, IGSID).
    pub platform_user_id: String,
    /// When it was linked, ms since the epoch.
    pub linked_at_ms: i64,
}

/// A user as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct User {
    /// The user id (chosen by the proposer, unique).
    pub id: String,
    /// The name shown to others.
    pub display_name: String,
    /// Agent or customer.
    pub user_type: UserType,
    /// Login email, lower-cased; unique among users.
    pub email: Option<String>,
    /// The argon2 PHC string of the password, when the user can log in with one.
    pub password_hash: Option<String>,
    /// Free-form metadata as a JSON text (bincode cannot store a `serde_json::Value`).
    pub metadata_json: Option<String>,
    /// Whether the user holds the `admin` scope.
    pub admin: bool,
    /// When the user was created, ms since the epoch.
    pub created_at_ms: i64,
    /// Linked external identities, in link order.
    pub identities: Vec<Identity>,
}

/// An API key for an integration. Only a SHA-256 of its secret is stored: the secret is a
/// random 256-bit value, so a slow password hash would add nothing but latency per request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ApiKey {
    /// The key id (the public half of the key).
    pub id: String,
    /// The user the key acts as.
    pub user_id: String,
    /// A name for people.
    pub name: String,
    /// SHA-256 of the secret half.
    #[serde(with = "serde_bytes")]
    pub secret_sha256: Vec<u8>,
    /// The scopes a request with this key has.
    pub scopes: Vec<String>,
    /// When the key was created, ms since the epoch.
    pub created_at_ms: i64,
    /// When the key was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

/// What an audit entry records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditAction {
    /// A user was created.
    UserCreated,
    /// An external identity was linked to the user.
    IdentityLinked,
    /// An external identity was unlinked from the user.
    IdentityUnlinked,
    /// An API key acting as the user was created.
    ApiKeyCreated,
    /// An API key acting as the user was revoked.
    ApiKeyRevoked,
    /// A channel was configured (`entity_id` is `channel:<name>`).
    ChannelCreated,
    /// A channel was removed.
    ChannelDeleted,
}

/// One audit log entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// Position in the cluster-wide audit sequence (dense, increasing).
    pub seq: u64,
    /// When it happened (the proposer's clock), ms since the epoch.
    pub at_ms: i64,
    /// The user the change is about.
    pub entity_id: String,
    /// What changed.
    pub action: AuditAction,
    /// Who made the change (a user id), when known.
    pub actor: Option<String>,
    /// The identity's platform, for identity changes.
    pub platform: Option<Platform>,
    /// The identity's platform user id, or the API key id.
    pub subject: Option<String>,
}

/// Directory commands (a part of the controller's commands).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum DirectoryCommand {
    /// Creates a user; refused when the id or the email is taken.
    CreateUser {
        /// The user, without identities.
        user: User,
        /// Who asked.
        actor: Option<String>,
    },
    /// Links an external identity to a user; refused when it belongs to another user.
    LinkIdentity {
        /// The user.
        user_id: String,
        /// The platform.
        platform: Platform,
        /// The id on the platform.
        platform_user_id: String,
        /// The proposer's clock.
        at_ms: i64,
        /// Who asked.
        actor: Option<String>,
    },
    /// Unlinks an external identity from a user.
    UnlinkIdentity {
        /// The user.
        user_id: String,
        /// The platform.
        platform: Platform,
        /// The id on the platform.
        platform_user_id: String,
        /// The proposer's clock.
        at_ms: i64,
        /// Who asked.
        actor: Option<String>,
    },
    /// Stores a new API key for an existing user.
    CreateApiKey {
        /// The key.
        key: ApiKey,
        /// Who asked.
        actor: Option<String>,
    },
    /// Revokes an API key.
    RevokeApiKey {
        /// The key id.
        id: String,
        /// The proposer's clock.
        at_ms: i64,
        /// Who asked.
        actor: Option<String>,
    },
    /// Sets the token signing key unless one is set already; answers the key in force.
    InitTokenKey {
        /// A random key proposed by a node.
        key: Vec<u8>,
    },
    /// Stores a new channel; refused when the name is taken.
    PutChannel(Box<Channel>),
    /// Removes a channel.
    DeleteChannel {
        /// Its name.
        name: String,
        /// The proposer's clock.
        at_ms: i64,
        /// Who asked.
        actor: Option<String>,
    },
    /// The user an external identity belongs to, created (with the identity) when there is
    /// none: how a contact's first inbound message gets a user.
    EnsureContact {
        /// The user to create if needed (its identities are replaced by this one).
        user: User,
        /// The platform.
        platform: Platform,
        /// The contact's id on the platform.
        platform_user_id: String,
    },
    /// Creates `user` (an admin) only when the directory has never had an admin: how a
    /// cluster started without `CHAT4ALL_ADMIN_*` gets one, whichever node proposes first.
    CreateFirstAdmin {
        /// The admin to create.
        user: User,
    },
}

/// Results of directory commands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum DirectoryResponse {
    /// The user as stored now.
    User(User),
    /// The email belongs to this user already.
    EmailTaken {
        /// Its owner.
        user_id: String,
    },
    /// A user with that id exists.
    UserIdTaken,
    /// No user with that id.
    UnknownUser,
    /// The identity belongs to another user.
    IdentityTaken {
        /// Its owner.
        user_id: String,
    },
    /// The identity is not linked to that user.
    NotLinked,
    /// The API key as stored now.
    ApiKey(ApiKey),
    /// No API key with that id.
    UnknownApiKey,
    /// The token signing key in force.
    TokenKey(Vec<u8>),
    /// The channel as stored (or as it was, for a deletion).
    Channel(Box<Channel>),
    /// A channel with that name exists (returned as it is).
    ChannelExists(Box<Channel>),
    /// No channel with that name.
    UnknownChannel,
    /// The directory has (or had) an admin already: the first one made.
    AdminExists {
        /// The first admin's id.
        user_id: String,
    },
}

// Row key prefixes inside the controller group's range.
const USER: &[u8] = b"u/";
const EMAIL: &[u8] = b"e/";
const IDENTITY: &[u8] = b"i/";
const API_KEY: &[u8] = b"k/";
const AUDIT: &[u8] = b"a/";
/// One row, set when the first admin is created: the directory has had an admin since.
const FIRST_ADMIN: &[u8] = b"f/admin";

fn row_key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // Ids are validated to hold no NUL, so NUL separates parts unambiguously.
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    keys::group_bytes(GroupId::CONTROLLER.0, &k)
}

fn user_key(id: &str) -> Vec<u8> {
    row_key(USER, &[id.as_bytes()])
}

fn email_key(email: &str) -> Vec<u8> {
    row_key(EMAIL, &[email.as_bytes()])
}

fn identity_key(platform: Platform, platform_user_id: &str) -> Vec<u8> {
    row_key(
        IDENTITY,
        &[platform.as_str().as_bytes(), platform_user_id.as_bytes()],
    )
}

fn first_admin_key() -> Vec<u8> {
    row_key(FIRST_ADMIN, &[])
}

fn api_key_key(id: &str) -> Vec<u8> {
    row_key(API_KEY, &[id.as_bytes()])
}

fn audit_key(entity_id: &str, seq: u64) -> Vec<u8> {
    row_key(AUDIT, &[entity_id.as_bytes(), &seq.to_be_bytes()])
}

/// The whole directory's key range.
pub(crate) fn range() -> (Vec<u8>, Vec<u8>) {
    // Directory rows all start with a lower-case ASCII prefix, so they sort between these.
    (
        keys::group_bytes(GroupId::CONTROLLER.0, b"a"),
        keys::group_bytes(GroupId::CONTROLLER.0, b"v"),
    )
}

fn prefix_range(prefix: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let end = keys::prefix_end(&prefix).unwrap_or_else(|| range().1);
    (prefix, end)
}

/// Directory reads against this node's copy (what the controller has applied here).
#[derive(Clone)]
pub struct DirectoryReader {
    pub(crate) db: Db,
}

impl DirectoryReader {
    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        self.db.get(Cf::DirectoryRow, key)
    }

    /// A user by id.
    pub fn user(&self, id: &str) -> Result<Option<User>, StorageError> {
        self.get(&user_key(id))
    }

    /// A user by (lower-cased) email.
    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, StorageError> {
        match self.get::<String>(&email_key(email))? {
            Some(id) => self.user(&id),
            None => Ok(None),
        }
    }

    /// The user an external identity is linked to.
    pub fn resolve(
        &self,
        platform: Platform,
        platform_user_id: &str,
    ) -> Result<Option<User>, StorageError> {
        match self.get::<String>(&identity_key(platform, platform_user_id))? {
            Some(id) => self.user(&id),
            None => Ok(None),
        }
    }

    /// Users in id order, starting after `after`, at most `limit`.
    pub fn users(&self, after: Option<&str>, limit: usize) -> Result<Vec<User>, StorageError> {
        let (start, end) = prefix_range(row_key(USER, &[]));
        let start = match after {
            // The first key after `after`'s own key.
            Some(a) => {
                let mut k = user_key(a);
                k.push(0);
                k
            }
            None => start,
        };
        Ok(self
            .db
            .scan::<User>(Cf::DirectoryRow, &start, &end, limit)?
            .into_iter()
            .map(|(_, u)| u)
            .collect())
    }

    /// An API key by id.
    pub fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StorageError> {
        self.get(&api_key_key(id))
    }

    /// The id of the first admin ever created, if there was one.
    pub fn first_admin(&self) -> Result<Option<String>, StorageError> {
        self.get(&first_admin_key())
    }

    /// Audit entries about `entity_id` with `seq > after`, oldest first, at most `limit`.
    pub fn audit(
        &self,
        entity_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        let mut prefix = row_key(AUDIT, &[entity_id.as_bytes()]);
        prefix.push(0);
        let (start, end) = prefix_range(prefix);
        let start = match after {
            Some(s) => audit_key(entity_id, s.saturating_add(1)),
            None => start,
        };
        Ok(self
            .db
            .scan::<AuditEntry>(Cf::DirectoryRow, &start, &end, limit)?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }
}

/// The directory's share of the controller state that lives in memory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct DirectoryCounters {
    /// The next audit sequence number.
    pub next_audit_seq: u64,
    /// The token signing key, once a node set it.
    pub token_key: Option<Vec<u8>>,
}

impl DirectoryCounters {
    fn audit(
        &mut self,
        txn: &mut RowTxn<'_>,
        mut entry: AuditEntry,
    ) -> Result<(), RaftStorageError> {
        entry.seq = self.next_audit_seq;
        self.next_audit_seq += 1;
        txn.put(audit_key(&entry.entity_id, entry.seq), &entry)
    }

    /// Applies one directory command.
    pub(crate) fn apply(
        &mut self,
        txn: &mut RowTxn<'_>,
        cmd: DirectoryCommand,
    ) -> Result<DirectoryResponse, RaftStorageError> {
        let entry = |entity_id: &str, at_ms, action, actor: Option<String>| AuditEntry {
            seq: 0,
            at_ms,
            entity_id: entity_id.to_string(),
            action,
            actor,
            platform: None,
            subject: None,
        };
        Ok(match cmd {
            DirectoryCommand::CreateUser { mut user, actor } => {
                if txn.get::<User>(&user_key(&user.id))?.is_some() {
                    return Ok(DirectoryResponse::UserIdTaken);
                }
                if let Some(email) = &user.email {
                    if let Some(owner) = txn.get::<String>(&email_key(email))? {
                        return Ok(DirectoryResponse::EmailTaken { user_id: owner });
                    }
                    txn.put(email_key(email), &user.id)?;
                }
                user.identities.clear();
                txn.put(user_key(&user.id), &user)?;
                if user.admin && txn.get::<String>(&first_admin_key())?.is_none() {
                    txn.put(first_admin_key(), &user.id)?;
                }
                let at = user.created_at_ms;
                self.audit(txn, entry(&user.id, at, AuditAction::UserCreated, actor))?;
                DirectoryResponse::User(user)
            }
            DirectoryCommand::LinkIdentity {
                user_id,
                platform,
                platform_user_id,
                at_ms,
                actor,
            } => {
                let Some(mut user) = txn.get::<User>(&user_key(&user_id))? else {
                    return Ok(DirectoryResponse::UnknownUser);
                };
                let ik = identity_key(platform, &platform_user_id);
                match txn.get::<String>(&ik)? {
                    // Linking again is a no-op, so a retried request cannot add a second
                    // audit entry.
                    Some(owner) if owner == user_id => return Ok(DirectoryResponse::User(user)),
                    Some(owner) => return Ok(DirectoryResponse::IdentityTaken { user_id: owner }),
                    None => {}
                }
                txn.put(ik, &user_id)?;
                user.identities.push(Identity {
                    platform,
                    platform_user_id: platform_user_id.clone(),
                    linked_at_ms: at_ms,
                });
                txn.put(user_key(&user_id), &user)?;
                let mut e = entry(&user_id, at_ms, AuditAction::IdentityLinked, actor);
                e.platform = Some(platform);
                e.subject = Some(platform_user_id);
                self.audit(txn, e)?;
                DirectoryResponse::User(user)
            }
            DirectoryCommand::UnlinkIdentity {
                user_id,
                platform,
                platform_user_id,
                at_ms,
                actor,
            } => {
                let Some(mut user) = txn.get::<User>(&user_key(&user_id))? else {
                    return Ok(DirectoryResponse::UnknownUser);
                };
                let ik = identity_key(platform, &platform_user_id);
                if txn.get::<String>(&ik)?.as_deref() != Some(user_id.as_str()) {
                    return Ok(DirectoryResponse::NotLinked);
                }
                txn.delete(ik);
                user.identities.retain(|i| {
                    !(i.platform == platform && i.platform_user_id == platform_user_id)
                });
                txn.put(user_key(&user_id), &user)?;
                let mut e = entry(&user_id, at_ms, AuditAction::IdentityUnlinked, actor);
                e.platform = Some(platform);
                e.subject = Some(platform_user_id);
                self.audit(txn, e)?;
                DirectoryResponse::User(user)
            }
            DirectoryCommand::CreateApiKey { key, actor } => {
                if txn.get::<User>(&user_key(&key.user_id))?.is_none() {
                    return Ok(DirectoryResponse::UnknownUser);
                }
                txn.put(api_key_key(&key.id), &key)?;
                let mut e = entry(
                    &key.user_id,
                    key.created_at_ms,
                    AuditAction::ApiKeyCreated,
                    actor,
                );
                e.subject = Some(key.id.clone());
                self.audit(txn, e)?;
                DirectoryResponse::ApiKey(key)
            }
            DirectoryCommand::RevokeApiKey { id, at_ms, actor } => {
                let Some(mut key) = txn.get::<ApiKey>(&api_key_key(&id))? else {
                    return Ok(DirectoryResponse::UnknownApiKey);
                };
                if key.revoked_at_ms.is_none() {
                    key.revoked_at_ms = Some(at_ms);
                    txn.put(api_key_key(&id), &key)?;
                    let mut e = entry(&key.user_id, at_ms, AuditAction::ApiKeyRevoked, actor);
                    e.subject = Some(id);
                    self.audit(txn, e)?;
                }
                DirectoryResponse::ApiKey(key)
            }
            DirectoryCommand::InitTokenKey { key } => {
                DirectoryResponse::TokenKey(self.token_key.get_or_insert(key).clone())
            }
            DirectoryCommand::PutChannel(channel) => self.put_channel(txn, *channel)?,
            DirectoryCommand::DeleteChannel { name, at_ms, actor } => {
                self.delete_channel(txn, name, at_ms, actor)?
            }
            DirectoryCommand::EnsureContact {
                user,
                platform,
                platform_user_id,
            } => self.ensure_contact(txn, user, platform, platform_user_id)?,
            DirectoryCommand::CreateFirstAdmin { mut user } => {
                if let Some(user_id) = txn.get::<String>(&first_admin_key())? {
                    return Ok(DirectoryResponse::AdminExists { user_id });
                }
                user.admin = true;
                return self.apply(txn, DirectoryCommand::CreateUser { user, actor: None });
            }
        })
    }
}
