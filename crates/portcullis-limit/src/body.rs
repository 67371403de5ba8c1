//! [`LimitBody`]: the response body of portcullis-limit's layers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

pin_project! {
    /// The body of a response that went through a portcullis-limit layer: the inner service's body,
    /// or the short body of a response the layer wrote itself (429, 503).
    ///
    /// For the load shedder it also holds the request's place under the in-flight limit until
    /// the body has been sent, so a streaming response counts for as long as it streams.
    #[derive(Debug)]
    pub struct LimitBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
            permit: Option<OwnedSemaphorePermit>,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> LimitBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body, permit: None },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Holds `permit` until the body ends (or is dropped).
    pub(crate) fn hold(self, held: Option<OwnedSemaphorePermit>) -> Self {
        match self.kind {
            Kind::Inner { body, permit } => Self {
                kind: Kind::Inner {
                    body,
                    permit: held.or(permit),
                },
            },
            full @ Kind::Full { .. } => Self { kind: full },
        }
    }
}

impl<B> Body for LimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body, permit } => {
                let polled = body.poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    permit.take();
                }
                polled
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
