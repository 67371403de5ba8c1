//! [`FleetFuture`], the response future of [`FleetLimit`](super::FleetLimit).

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use governor::clock::Clock;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::FleetShared;
use super::link::Call;
use crate::body::LimitBody;
use crate::key::Key;

pin_project! {
    /// The response future of [`FleetLimit`](super::FleetLimit): the Redis check (at most
    /// one deadline), then the inner service's response, or the 429 the limit wrote.
    pub struct FleetFuture<S, B, C>
    where
        S: Service<Request<B>>,
        C: Clock,
    {
        #[pin]
        state: State<S, B, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, C>
    where
        S: Service<Request<B>>,
        C: Clock,
    {
        Checking {
            call: Call,
            service: Option<S>,
            request: Option<Request<B>>,
            key: Key,
            client: IpAddr,
            shared: Arc<FleetShared<C>>,
        },
        Inner {
            #[pin]
            future: S::Future,
        },
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, B, C> FleetFuture<S, B, C>
where
    S: Service<Request<B>>,
    C: Clock,
{
    pub(crate) fn inner(future: S::Future) -> Self {
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

    pub(crate) fn checking(
        call: Call,
        service: S,
        request: Request<B>,
        key: Key,
        client: IpAddr,
        shared: Arc<FleetShared<C>>,
    ) -> Self {
        Self {
            state: State::Checking {
                call,
                service: Some(service),
                request: Some(request),
                key,
                client,
                shared,
            },
        }
    }
}

impl<S, B, C, ResB> Future for FleetFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    C: Clock,
{
    type Output = Result<Response<LimitBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Checking {
                    call,
                    service,
                    request,
                    key,
                    client,
                    shared,
                } => {
                    let outcome = ready!(call.as_mut().poll(cx));
                    let (Some(mut service), Some(request)) = (service.take(), request.take())
                    else {
                        // Polled again after completion: a contract violation, never a panic.
                        return Poll::Ready(Ok(Response::new(LimitBody::full(Bytes::new()))));
                    };
                    match shared.decide(Some(outcome), key, *client) {
                        Ok(()) => State::Inner {
                            future: service.call(request),
                        },
                        Err(rejection) => State::Refused {
                            response: Some(shared.local.response(&rejection)),
                        },
                    }
                }
                StateProj::Inner { future } => {
                    return future
                        .poll(cx)
                        .map(|result| result.map(|response| response.map(LimitBody::inner)));
                }
                StateProj::Refused { response } => {
                    return Poll::Ready(Ok(crate::future::written(response.take())));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, B, C> fmt::Debug for FleetFuture<S, B, C>
where
    S: Service<Request<B>>,
    C: Clock,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Checking { .. } => "checking",
            State::Inner { .. } => "inner",
            State::Refused { .. } => "refused",
        };
        f.debug_struct("FleetFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
