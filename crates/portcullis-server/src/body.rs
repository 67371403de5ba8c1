//! The response body portcullis hands to hyper: the service's body, or a fixed body for answers
//! portcullis writes itself (a 500 after a panic), carrying the request's in-flight mark.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::metrics::{CloseReason, STREAMS_RESET};
use crate::rate::{BodyShared, MinRate, StreamWatch};
use crate::state::InFlight;

pin_project! {
    /// A response body served by portcullis.
    ///
    /// Wraps the application's body. The request counts as in flight until this body ends or
    /// is dropped, which is what keeps idle deadlines off a connection that is still
    /// streaming. A panic while producing the body ends the response with an error instead of
    /// taking down the connection task, and so does a request body that fell below its
    /// minimum rate while this response was under way (the connection closes, or on HTTP/2
    /// the stream is reset).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        in_flight: Option<InFlight>,
        // Boxed: most responses have neither a request body nor an HTTP/2 stream to watch.
        rated: Option<Box<Rated>>,
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

/// What a response is held to besides its own body: the request's body rate, and on HTTP/2
/// the stream's response rate.
#[derive(Debug)]
struct Rated {
    request: Option<Arc<BodyShared>>,
    stream: Option<(Arc<StreamWatch>, MinRate)>,
    /// A frame handed on that hyper has not asked past yet.
    owed: bool,
}

impl<B> ResponseBody<B> {
    pub(crate) fn fixed(data: &'static [u8], in_flight: InFlight) -> Self {
        Self {
            kind: Kind::Fixed {
                data: Some(Bytes::from_static(data)),
            },
            in_flight: Some(in_flight),
            rated: None,
        }
    }

    /// A response held to `request`'s body rate (it ends with an error if that body falls
    /// below it) and, on HTTP/2, reporting each frame to the stream's watch (`stream`, with
    /// the response rate).
    #[inline]
    pub(crate) fn rated(
        body: B,
        in_flight: InFlight,
        request: Option<Arc<BodyShared>>,
        stream: Option<(Arc<StreamWatch>, MinRate)>,
    ) -> Self {
        let rated = (request.is_some() || stream.is_some()).then(|| {
            Box::new(Rated {
                request,
                stream,
                owed: false,
            })
        });
        Self {
            kind: Kind::Inner { body },
            in_flight: Some(in_flight),
            rated,
        }
    }
}

/// The error a [`ResponseBody`] yields when the request's body fell below its minimum rate
/// while the response was under way.
#[derive(Debug)]
pub struct RequestBodyTooSlow(());

impl std::fmt::Display for RequestBodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body fell below its minimum rate; response cut short")
    }
}

impl std::error::Error for RequestBodyTooSlow {}

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
        if let Some(rated) = this.rated.as_deref_mut() {
            if let Some(request) = &rated.request
                && request.is_violated()
            {
                if rated.stream.is_none() {
                    request.conn.hint_close(CloseReason::MinBodyRate);
                } else {
                    // HTTP/2: hyper resets the stream when its body fails.
                    metrics::counter!(STREAMS_RESET, "reason" => CloseReason::MinBodyRate.as_str())
                        .increment(1);
                }
                *this.rated = None;
                *this.in_flight = None;
                this.kind.set(Kind::Fixed { data: None });
                return Poll::Ready(Some(Err(BoxError::from(RequestBodyTooSlow(())))));
            }
            if let Some((watch, _)) = &rated.stream
                && std::mem::take(&mut rated.owed)
            {
                watch.taken();
            }
        }
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
        if let Some(rated) = this.rated.as_deref_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some((watch, rate)), Some(data)) = (&rated.stream, frame.data_ref())
                        && !data.is_empty()
                    {
                        watch.handed_on(data.len() as u64, *rate);
                        rated.owed = true;
                        if let Some(state) = this.in_flight.as_ref().and_then(InFlight::state) {
                            state.h2_handed(data.len() as u64);
                        }
                    }
                }
                Poll::Pending => {
                    // Hear of the request body falling below its rate while waiting.
                    if let Some(request) = &rated.request
                        && request.poll_violated(cx.waker())
                    {
                        cx.waker().wake_by_ref();
                    }
                }
                Poll::Ready(_) => {}
            }
        }
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
