//! Metadata of any size for the tools that measure or break standin with it: keys of 100 bytes put straight into etcd.

use anyhow::Context;
use futures::StreamExt;

/// Puts `keys` keys of 100 bytes under `prefix` (`{prefix}k00000000` on),
/// 128 to a transaction (etcd's default limit), 8 transactions at a time.
pub async fn preload(
    client: &etcd_client::Client,
    prefix: &str,
    keys: usize,
) -> anyhow::Result<()> {
    let value = vec![b'v'; 100];
    let batches = (0..keys).collect::<Vec<_>>();
    let writes = batches.chunks(128).map(|batch| {
        let ops: Vec<etcd_client::TxnOp> = batch
            .iter()
            .map(|i| etcd_client::TxnOp::put(format!("{prefix}k{i:08}"), value.clone(), None))
            .collect();
        let mut kv = client.kv_client();
        async move { kv.txn(etcd_client::Txn::new().and_then(ops)).await }
    });
    let mut writing = futures::stream::iter(writes).buffer_unordered(8);
    while let Some(written) = writing.next().await {
        written.context("preloading metadata")?;
    }
    Ok(())
}
