//! What the connector tests share: a reqwest client (with rustls' ring provider, which
//! reqwest's `rustls-no-provider` build leaves to the application) and a fake per platform.

#![allow(dead_code)] // Each test file uses its own subset.

use std::sync::Arc;

use chat4all_connectors::testing::FakePlatform;
use chat4all_connectors::{ChannelSettings, Connector, Platform, connector};

/// Every platform, for tests that hold for all three.
pub const PLATFORMS: [Platform; 3] = [Platform::Telegram, Platform::Whatsapp, Platform::Instagram];

/// A client like the node's.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().expect("reqwest client")
}

/// The connector for `settings`.
pub fn connect(settings: ChannelSettings) -> Arc<dyn Connector> {
    connector(settings, http()).expect("complete settings")
}

/// A fake of `platform` and a connector on it with the fake's own settings.
pub async fn fake(platform: Platform) -> (FakePlatform, Arc<dyn Connector>) {
    let fake = FakePlatform::start(platform).await;
    let c = connect(fake.settings());
    (fake, c)
}

/// A valid recipient: a Telegram chat id, a WhatsApp number, an Instagram IGSID.
pub fn recipient(platform: Platform) -> &'static str {
    match platform {
        Platform::Telegram => "111",
        Platform::Whatsapp => "16505551234",
        Platform::Instagram => "1234567890123456",
    }
}
