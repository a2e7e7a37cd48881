//! A tower layer that admits or refuses each request before the service sees it: the one piece under the routing layer and the auth layer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

/// Decides, per request, whether it reaches the service.
pub trait Admit: Send + Sync + 'static {
    /// Lets `request` through (and may add to its extensions), or says the
    /// refusal to answer with.
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), Status>;
}

/// Wraps services so each request passes `A` first.
pub struct GateLayer<A> {
    pub(crate) admit: Arc<A>,
}

// By hand: a derive would ask `A: Clone` of what only sits behind an Arc.
impl<A> Clone for GateLayer<A> {
    fn clone(&self) -> Self {
        Self {
            admit: self.admit.clone(),
        }
    }
}

impl<S, A> Layer<S> for GateLayer<A> {
    type Service = Gated<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            admit: self.admit.clone(),
        }
    }
}

/// A service behind a [`GateLayer`].
pub struct Gated<S, A> {
    inner: S,
    admit: Arc<A>,
}

impl<S: Clone, A> Clone for Gated<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            admit: self.admit.clone(),
        }
    }
}

// Keeps the wrapped service's gRPC name, so a gated service is added to a
// tonic server like the bare one.
impl<S: tonic::server::NamedService, A> tonic::server::NamedService for Gated<S, A> {
    const NAME: &'static str = S::NAME;
}

impl<S, A, ReqBody, ResBody> Service<Request<ReqBody>> for Gated<S, A>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    A: Admit,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Err(status) = self.admit.admit(&mut request) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        // The clone that was made ready is the one to call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}
