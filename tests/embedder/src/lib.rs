//! Embeds standin with default features: the smallest service that uses it.

use standin::{BoxError, Coordinator, Epoch, FencedStore, Snapshot};

/// A coordinator that serves nothing but its epoch.
pub struct Epochs;

impl Coordinator for Epochs {
    type Meta = ();
    type Serving = Epoch;
    type Request = ();
    type Response = i64;

    fn decode(&self, _: Snapshot) -> Result<(), BoxError> {
        Ok(())
    }

    async fn activate(&self, epoch: Epoch, _: (), _: FencedStore) -> Result<Epoch, BoxError> {
        Ok(epoch)
    }

    async fn handle(&self, epoch: &mut Epoch, _: ()) -> i64 {
        epoch.revision
    }
}
