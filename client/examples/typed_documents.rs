//! Stores and reads typed documents through [`cairn_client::Client`] against a running
//! cluster (for example `cairn playground`), and checks that everything read back is what
//! was written. Exits non-zero on any difference or error.
//!
//! ```text
//! CAIRN_PD=127.0.0.1:7700 cargo run -p cairn-client --example typed_documents
//! ```
//!
//! Every run writes under its own key prefix and deletes its documents at the end.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use cairn_client::{Client, Error, Versioned};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    email: String,
    tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    user: String,
    /// Item name -> quantity.
    items: BTreeMap<String, u32>,
    total_cents: u64,
    paid: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pd = std::env::var("CAIRN_PD").unwrap_or_else(|_| "127.0.0.1:7700".to_string());
    println!("connecting to the placement driver at {pd}");
    let client = Client::connect(pd.as_str()).await.with_context(|| format!("connecting to {pd}"))?;
    println!("shard map revision {}, {} shard(s)", client.shard_map_revision(), client.cached_shards().len());

    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = format!("example-{run}-{}:", std::process::id());
    let result = exercise(&client, &prefix).await;
    // Clean up whatever was written, even after a failure.
    let leftovers: Vec<_> = client.scan_prefix(&prefix).try_collect().await.unwrap_or_default();
    for doc in &leftovers {
        client.delete(&doc.key).await.with_context(|| "cleaning up")?;
    }
    println!("deleted {} document(s) under {prefix}", leftovers.len());
    result?;
    println!("all checks passed");
    Ok(())
}

async fn exercise(client: &Client, prefix: &str) -> anyhow::Result<()> {
    let users = [
        User { name: "Ada".into(), email: "ada@example.com".into(), tags: vec!["admin".into()] },
        User { name: "Grace".into(), email: "grace@example.com".into(), tags: vec![] },
        User { name: "Linus".into(), email: "linus@example.com".into(), tags: vec!["ops".into(), "oncall".into()] },
    ];
    let user_key = |i: usize| format!("{prefix}user:{i}");

    // One document at a time.
    for (i, user) in users.iter().enumerate() {
        let version = client.put_json(user_key(i), user).await?;
        println!("put {} -> version {version}", user_key(i));
    }
    for (i, user) in users.iter().enumerate() {
        let read: Option<User> = client.get_json(user_key(i)).await?;
        ensure!(read.as_ref() == Some(user), "{} read back as {read:?}, wrote {user:?}", user_key(i));
    }
    println!("read back {} users", users.len());

    // A batch across shards, read back in order.
    let orders: Vec<(String, Order)> = (0u32..5)
        .map(|i| {
            let order = Order {
                user: user_key(i as usize % users.len()),
                items: BTreeMap::from([("widget".to_string(), i + 1), ("gadget".to_string(), 2 * i)]),
                total_cents: 1999 * u64::from(i + 1),
                paid: i % 2 == 0,
            };
            (format!("{prefix}order:{i:03}"), order)
        })
        .collect();
    let texts: Vec<(String, String)> =
        orders.iter().map(|(k, o)| Ok((k.clone(), serde_json::to_string(o)?))).collect::<anyhow::Result<_>>()?;
    let versions = client.batch_put(texts).await?;
    println!("batch_put {} orders -> versions {versions:?}", orders.len());
    let docs = client.batch_get(orders.iter().map(|(k, _)| k)).await?;
    for ((key, order), doc) in orders.iter().zip(&docs) {
        let doc = doc.as_ref().with_context(|| format!("{key} is missing after batch_put"))?;
        let read: Order = serde_json::from_slice(&doc.value)?;
        ensure!(&read == order, "{key} read back as {read:?}, wrote {order:?}");
    }
    println!("batch_get read back {} orders", docs.len());

    // Compare-and-set: a stale version must be refused, the current one accepted.
    let Some(Versioned { value: mut ada, version }) = client.get_json_versioned::<User>(user_key(0)).await? else {
        bail!("{} vanished", user_key(0));
    };
    ada.tags.push("reviewer".into());
    let new_version = client.put_json_if_version(user_key(0), &ada, version).await?;
    println!("put_json_if_version {} at version {version} -> {new_version}", user_key(0));
    match client.put_json_if_version(user_key(0), &ada, version).await {
        Err(Error::ConditionFailed { current_version }) if current_version == new_version => {
            println!("a write at the stale version {version} was refused (current {current_version}), as expected");
        }
        other => bail!("a write at a stale version must fail with ConditionFailed, got {other:?}"),
    }
    match client.put_json_if_version(user_key(1), &users[1], 0).await {
        Err(Error::ConditionFailed { .. }) => println!("create-if-absent of an existing user was refused, as expected"),
        other => bail!("create-if-absent of an existing key must fail, got {other:?}"),
    }
    ensure!(client.get_json::<User>(user_key(0)).await?.as_ref() == Some(&ada), "the accepted update is not visible");

    // A scan over the prefix returns every document once, in key order.
    let scanned: Vec<_> = client.scan_prefix(prefix).try_collect().await?;
    let mut expected: Vec<String> =
        (0..users.len()).map(user_key).chain(orders.iter().map(|(k, _)| k.clone())).collect();
    expected.sort();
    let keys: Vec<String> = scanned.iter().map(|d| String::from_utf8_lossy(&d.key).into_owned()).collect();
    ensure!(keys == expected, "scan returned {keys:?}, expected {expected:?}");
    let scanned_users: Vec<User> = scanned
        .iter()
        .filter(|d| d.key.starts_with(format!("{prefix}user:").as_bytes()))
        .map(|d| serde_json::from_slice(&d.value))
        .collect::<Result<_, _>>()?;
    let mut expected_users = users.to_vec();
    expected_users[0] = ada.clone();
    ensure!(scanned_users == expected_users, "scanned users {scanned_users:?}, expected {expected_users:?}");
    println!("scan of {prefix} returned {} documents in key order", scanned.len());

    // Deletes, and a read of a deleted key.
    ensure!(client.delete(user_key(2)).await?, "{} should have existed", user_key(2));
    ensure!(client.get_json::<User>(user_key(2)).await?.is_none(), "{} is still there after delete", user_key(2));
    ensure!(!client.delete(user_key(2)).await?, "{} was deleted twice", user_key(2));
    println!("deleted {} and checked it is gone", user_key(2));
    Ok(())
}
