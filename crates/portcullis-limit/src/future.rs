//! The response futures of this crate's services: [`ResponseFuture`] for
//! [`RateLimit`](crate::RateLimit), [`LoadShedFuture`] for [`LoadShed`](crate::LoadShed).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use crate::body::LimitBody;

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): the inner service's response,
    /// or the 429 the limit wrote.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Inner {
            #[pin]
            future: F,
        },
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LimitBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(LimitBody::inner))),
            StateProj::Refused { response } => Poll::Ready(Ok(written(response.take()))),
        }
    }
}

/// A response the layer wrote, as a [`LimitBody`]; an empty 200 if polled again after
/// completion (a contract violation of the caller, never a panic).
pub(crate) fn written<B>(response: Option<Response<Bytes>>) -> Response<LimitBody<B>> {
    response
        .map(|response| response.map(LimitBody::full))
        .unwrap_or_else(|| Response::new(LimitBody::full(Bytes::new())))
}

pin_project! {
    /// The response future of [`LoadShed`](crate::LoadShed): the inner service's response,
    /// with the request's place under the in-flight limit moved into its body, or the 503
    /// the shedder wrote.
    #[derive(Debug)]
    pub struct LoadShedFuture<F> {
        #[pin]
        state: ShedState<F>,
    }
}

pin_project! {
    #[project = ShedStateProj]
    #[derive(Debug)]
    enum ShedState<F> {
        Admitted {
            #[pin]
            future: F,
            permit: Option<OwnedSemaphorePermit>,
        },
        Shed {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F> LoadShedFuture<F> {
    pub(crate) fn admitted(future: F, permit: OwnedSemaphorePermit) -> Self {
        Self {
            state: ShedState::Admitted {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn shed(response: Response<Bytes>) -> Self {
        Self {
            state: ShedState::Shed {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for LoadShedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ShedStateProj::Admitted { future, permit } => {
                let result = std::task::ready!(future.poll(cx));
                let permit = permit.take();
                Poll::Ready(
                    result.map(|response| response.map(|body| LimitBody::inner(body).hold(permit))),
                )
            }
            ShedStateProj::Shed { response } => Poll::Ready(Ok(written(response.take()))),
        }
    }
}
