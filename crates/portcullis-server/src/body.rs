//! The response body portcullis hands to hyper: the service's body, or a fixed body for answers
//! portcullis writes itself (a 500 after a panic), carrying the request's in-flight mark.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::state::InFlight;

pin_project! {
    /// A response body served by portcullis.
    ///
    /// Wraps the application's body. The request counts as in flight until this body ends or
    /// is dropped, which is what keeps idle deadlines off a connection that is still
    /// streaming. A panic while producing the body ends the response with an error instead of
    /// taking down the connection task.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        in_flight: Option<InFlight>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Fixed { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            kind: Kind::Inner { body },
            in_flight: Some(in_flight),
        }
    }

    pub(crate) fn fixed(data: &'static [u8], in_flight: InFlight) -> Self {
        Self {
            kind: Kind::Fixed {
                data: Some(Bytes::from_static(data)),
            },
            in_flight: Some(in_flight),
        }
    }
}

/// The error a [`ResponseBody`] yields when the application's body panicked.
#[derive(Debug)]
pub struct BodyPanicked(());

impl std::fmt::Display for BodyPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response body panicked")
    }
}

impl std::error::Error for BodyPanicked {}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = match this.kind.as_mut().project() {
            KindProj::Inner { body } => {
                match catch_unwind(AssertUnwindSafe(|| body.poll_frame(cx))) {
                    Ok(Poll::Ready(Some(Err(error)))) => Poll::Ready(Some(Err(error.into()))),
                    Ok(Poll::Ready(Some(Ok(frame)))) => Poll::Ready(Some(Ok(frame))),
                    Ok(Poll::Ready(None)) => Poll::Ready(None),
                    Ok(Poll::Pending) => Poll::Pending,
                    Err(_) => {
                        tracing::error!("response body panicked; ending the response");
                        metrics::counter!(crate::metrics::HANDLER_PANICS).increment(1);
                        // Never poll the panicked body again.
                        this.kind.set(Kind::Fixed { data: None });
                        Poll::Ready(Some(Err(BoxError::from(BodyPanicked(())))))
                    }
                }
            }
            KindProj::Fixed { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // The response is complete (or failed): the request no longer holds the
            // connection busy, even if hyper keeps this body around a little longer.
            *this.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Fixed { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Fixed { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
