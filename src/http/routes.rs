//! The route table. Every endpoint is mounted through [`Routes`], which remembers each
//! method and path with the way its handler reads the body, so the whole API can be listed:
//! the tests walk every route the server answers from this list, and a route added later
//! cannot be left out of that walk.

use std::{borrow::Cow, sync::Arc};

use axum::{Router, http::Method, routing::MethodRouter};

use crate::Services;

/// How a route's handler reads the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A Matrix endpoint: the body goes through the checks of [`super::ruma`].
    Json,
    /// Bytes of any kind (media uploads).
    Raw,
    /// The handler ignores the body (`GET` endpoints read it only up to the size limit).
    Ignored,
}

/// One mounted route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub method: Method,
    /// The axum path template, with `{name}` parameters.
    pub path: Cow<'static, str>,
    pub body: BodyKind,
}

/// A router under construction, with the list of what it mounts.
pub struct Routes {
    router: Router<Arc<Services>>,
    mounted: Vec<Mounted>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl Routes {
    pub fn new() -> Self {
        Self { router: Router::new(), mounted: Vec::new() }
    }

    /// Mounts `handler` (which must answer `method` only) at `path`.
    pub fn mount(
        mut self,
        method: Method,
        path: impl Into<Cow<'static, str>>,
        body: BodyKind,
        handler: MethodRouter<Arc<Services>>,
    ) -> Self {
        let path = path.into();
        self.router = self.router.route(&path, handler);
        self.mounted.push(Mounted { method, path, body });
        self
    }

    /// Everything mounted so far, in mounting order.
    pub fn mounted(&self) -> &[Mounted] {
        &self.mounted
    }

    pub fn into_router(self) -> Router<Arc<Services>> {
        self.router
    }
}
