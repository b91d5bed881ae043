//! The front door for other servers: `/_matrix/federation/*` and `/_matrix/key/*`.
//!
//! Routes are mounted only through [`FederationRouter`]. An endpoint that ruma declares
//! signed (`ServerSignatures`) can only be mounted with [`FederationRouter::signed`], whose
//! handler receives a [`Signed`] request: the extractor checks the `X-Matrix` signature
//! before the handler runs, so a signed endpoint without the check does not compile (and
//! `http::ruma::route` refuses such endpoints too). The few endpoints the spec leaves
//! unauthenticated (`/version`, the key endpoints, OpenID's `userinfo`) go through
//! [`FederationRouter::public`], which only takes endpoints ruma declares unauthenticated.
//! With `allow_federation = false` every route answers `403 M_FORBIDDEN`.

mod directory;
mod events;
mod keys;
mod media;
mod membership;
mod openid;
mod query;
mod send;
mod space;
mod user;
mod version;

use std::{future::Future, sync::Arc};

use axum::{
    extract::{FromRequest, RawPathParams, Request, State},
    http::{HeaderMap, Method},
    response::{IntoResponse, Response},
    routing::on,
};
use ruma::{
    OwnedServerName,
    api::{
        IncomingRequest, IncomingRequestExt, auth_scheme::NoAuthentication,
        federation::authentication::ServerSignatures, path_builder::PathBuilder,
    },
};

use super::{
    routes::{BodyKind, Routes},
    ruma::{Ruma, RumaResponse, checked_body, classify, method_filter, read_body, route},
};
use crate::{Error, Result, Services, actors::contain::contained_sync, federation::request_auth};

/// A request from another server whose `X-Matrix` signature was checked.
pub struct Signed<R> {
    /// The server that signed it.
    pub origin: OwnedServerName,
    pub body: R,
    /// The request's headers (media downloads read `Range`).
    pub headers: HeaderMap,
}

impl<R> FromRequest<Arc<Services>> for Signed<R>
where
    R: IncomingRequest<Authentication = ServerSignatures> + Send + 'static,
{
    type Rejection = Error;

    async fn from_request(request: Request, services: &Arc<Services>) -> Result<Self> {
        let federation = &services.federation;
        if !federation.policy.enabled() {
            return Err(Error::forbidden("Federation is disabled on this server."));
        }
        let (mut parts, body) = request.into_parts();
        // Refuse an unsigned request before reading its body.
        request_auth::parse_header(&parts.headers)?;
        let params =
            <RawPathParams as axum::extract::FromRequestParts<Arc<Services>>>::from_request_parts(
                &mut parts, services,
            )
            .await
            .map_err(|rejection| {
                Error::invalid_param(format!("invalid path parameter: {}", rejection.body_text()))
            })?;
        let params: Vec<String> = params.iter().map(|(_, value)| value.to_owned()).collect();
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        let bytes =
            read_body(&parts.headers, body, services.config.max_request_size.as_usize()).await?;
        let origin = request_auth::authenticate(
            &federation.keys,
            &federation.policy,
            &federation.server_name,
            &parts.method,
            &parts.uri,
            &parts.headers,
            &bytes,
        )
        .await?;
        let sent_empty = bytes.is_empty();
        let headers = parts.headers.clone();
        let bytes = checked_body::<R>(bytes)?;
        let request = axum::http::Request::from_parts(parts, bytes.as_ref());
        // As for clients: a panic in ruma's parser is a refusal of this request.
        match contained_sync(|| R::try_from_http_request(request, &params)) {
            Ok(Ok(body)) => Ok(Self { origin, body, headers }),
            Ok(Err(error)) => Err(classify(sent_empty, error)),
            Err(panic) => {
                tracing::warn!(%panic, %origin, "parsing a federation request panicked inside ruma");
                Err(Error::bad_json("The request could not be parsed."))
            }
        }
    }
}

/// A mounted federation route, for listings and for the test that every signed one refuses
/// unsigned requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedRoute {
    pub method: Method,
    pub path: &'static str,
    /// Whether the route requires an `X-Matrix` signature.
    pub signed: bool,
}

/// The only way federation routes are mounted; see the module documentation.
pub struct FederationRouter {
    routes: Routes,
    mounted: Vec<MountedRoute>,
}

impl FederationRouter {
    fn new(routes: Routes) -> Self {
        Self { routes, mounted: Vec::new() }
    }

    /// Mounts a handler for an endpoint that requires a signature.
    pub fn signed<R, H, F>(self, handler: H) -> Self
    where
        R: IncomingRequest<Authentication = ServerSignatures> + Send + 'static,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Signed<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
    {
        self.signed_streamed(move |services: Arc<Services>, request: Signed<R>| {
            let answer = handler(services, request);
            async move { answer.await.map(|response| RumaResponse(response).into_response()) }
        })
    }

    /// Mounts a handler for an endpoint that requires a signature and answers with a
    /// response of its own making (media, streamed from a file).
    pub fn signed_streamed<R, H, F>(mut self, handler: H) -> Self
    where
        R: IncomingRequest<Authentication = ServerSignatures> + Send + 'static,
        H: Fn(Arc<Services>, Signed<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response>> + Send + 'static,
    {
        let filter = method_filter(&R::METHOD);
        for path in R::PATH_BUILDER.all_paths() {
            let handler = handler.clone();
            self.mounted.push(MountedRoute { method: R::METHOD, path, signed: true });
            self.routes = self.routes.mount(
                R::METHOD,
                path,
                BodyKind::Json,
                on(filter, move |State(services): State<Arc<Services>>, request: Signed<R>| {
                    handler(services, request)
                }),
            );
        }
        self
    }

    /// Mounts a handler for an endpoint the spec leaves unauthenticated.
    pub fn public<R, H, F>(mut self, handler: H) -> Self
    where
        R: IncomingRequest<Authentication = NoAuthentication> + Send + 'static,
        R::OutgoingResponse: Send,
        H: Fn(Arc<Services>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
    {
        for path in R::PATH_BUILDER.all_paths() {
            self.mounted.push(MountedRoute { method: R::METHOD, path, signed: false });
        }
        let guarded = move |services: Arc<Services>, request: Ruma<R>| {
            let handler = handler.clone();
            async move {
                if !services.federation.policy.enabled() {
                    return Err(Error::forbidden("Federation is disabled on this server."));
                }
                handler(services, request).await
            }
        };
        self.routes = route(self.routes, guarded);
        self
    }
}

/// Every federation and key route.
fn table(routes: Routes) -> FederationRouter {
    FederationRouter::new(routes)
        .public(version::version)
        .public(keys::server_keys)
        .public(keys::query)
        .public(keys::query_batch)
        .public(openid::userinfo)
        .signed(query::profile)
        .signed(query::directory)
        .signed(user::devices)
        .signed(user::keys_query)
        .signed(user::keys_claim)
        .signed(directory::public_rooms)
        .signed(directory::public_rooms_filtered)
        .signed(space::hierarchy)
        .signed_streamed(media::download)
        .signed_streamed(media::thumbnail)
        .signed(send::transaction)
        .signed(events::event)
        .signed(events::state)
        .signed(events::state_ids)
        .signed(events::event_auth)
        .signed(events::backfill)
        .signed(events::missing_events)
        .signed(events::timestamp_to_event)
        .signed(membership::make_join)
        .signed(membership::send_join)
}

/// Adds the federation routes to the application router.
pub fn routes(routes: Routes) -> Routes {
    table(routes).routes
}

/// The federation routes and whether each requires a signature.
pub fn mounted_routes() -> Vec<MountedRoute> {
    table(Routes::new()).mounted
}
