//! URL previews: the OpenGraph data of a web page, with its image kept in the media
//! repository.
//!
//! Off until the operator lists what may be previewed (`url_preview_*_allowlist`); while
//! off, the endpoint answers `404 M_UNRECOGNIZED`, as for an endpoint this server does not
//! offer, so clients stop asking. A URL outside the allowlists gets `403 M_FORBIDDEN`, and so
//! does one whose address, or any redirect's address, is in `ip_range_denylist` (see
//! [`crate::net::ssrf`]). The allowlists decide which links users may have previewed; redirects
//! and the page's image are not held to them (an image usually lives on a CDN), only to the
//! explicit denylist and the address checks, which are the security boundary.
//!
//! Pages are read up to `url_preview_max_spider_size`, images up to
//! `url_preview_max_media_size`; fetches are limited in number, time and redirects, and the
//! result is cached for `url_preview_cache_ttl` seconds.

use std::{sync::Arc, time::Duration};

use axum::http::StatusCode;
use reqwest::{Url, header::CONTENT_TYPE};
use ruma::api::error::ErrorKind;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::{Media, html};
use crate::{
    Config, Error, Result,
    net::ssrf::{self, GuardedResolver, IpDenylist, Refused},
    storage::{
        Batch,
        codec::Json,
        media::{PREVIEWS_TABLE, PreviewRecord},
    },
};

/// Redirects followed for one fetch.
const MAX_REDIRECTS: usize = 5;
/// Longest a fetch (connection, headers and body) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Previews being fetched at once; more are refused with `429` rather than queued.
const CONCURRENT_FETCHES: usize = 16;

/// Which URLs may be previewed.
#[derive(Debug, Clone, Default)]
pub struct PreviewPolicy {
    domain_contains: Vec<String>,
    domain_explicit: Vec<String>,
    domain_denied: Vec<String>,
    url_contains: Vec<String>,
    check_root_domain: bool,
}

impl PreviewPolicy {
    pub fn from_config(config: &Config) -> Self {
        let lower = |list: &[String]| list.iter().map(|entry| entry.to_ascii_lowercase()).collect();
        Self {
            domain_contains: lower(&config.url_preview_domain_contains_allowlist),
            domain_explicit: lower(&config.url_preview_domain_explicit_allowlist),
            domain_denied: lower(&config.url_preview_domain_explicit_denylist),
            url_contains: config.url_preview_url_contains_allowlist.clone(),
            check_root_domain: config.url_preview_check_root_domain,
        }
    }

    /// Previews are offered only once some allowlist is configured.
    pub fn enabled(&self) -> bool {
        !(self.domain_contains.is_empty()
            && self.domain_explicit.is_empty()
            && self.url_contains.is_empty())
    }

    fn host(url: &Url) -> String {
        url.host_str().unwrap_or_default().trim_end_matches('.').to_ascii_lowercase()
    }

    /// Refuses hosts on the explicit denylist (every fetch, redirects and images included).
    pub fn check_denied(&self, url: &Url) -> Result<(), Refused> {
        let host = Self::host(url);
        if self.domain_denied.contains(&host) {
            return Err(Refused(format!("{host} is in url_preview_domain_explicit_denylist")));
        }
        Ok(())
    }

    /// Whether a user may have `url` previewed.
    pub fn check_allowed(&self, url: &Url) -> Result<(), Refused> {
        self.check_denied(url)?;
        if self.url_contains.iter().any(|entry| entry == "*" || url.as_str().contains(entry)) {
            return Ok(());
        }
        let host = Self::host(url);
        let mut candidates = vec![host.clone()];
        if self.check_root_domain {
            candidates.push(root_domain(&host).to_owned());
        }
        let allowed = candidates.iter().any(|host| {
            self.domain_explicit.iter().any(|entry| entry == "*" || entry == host)
                || self.domain_contains.iter().any(|entry| entry == "*" || host.contains(entry))
        });
        if allowed {
            Ok(())
        } else {
            Err(Refused(format!("{host} is not in this server's URL preview allowlists")))
        }
    }
}

/// The last two labels of a host name (`en.m.wikipedia.org` → `wikipedia.org`).
fn root_domain(host: &str) -> &str {
    let mut dots = host.rmatch_indices('.');
    match (dots.next(), dots.next()) {
        (Some(_), Some((index, _))) => &host[index + 1..],
        _ => host,
    }
}

/// Fetches and caches previews.
pub struct Previewer {
    client: reqwest::Client,
    policy: Arc<PreviewPolicy>,
    denylist: Arc<IpDenylist>,
    max_page: usize,
    max_image: u64,
    ttl_ms: u64,
    permits: Semaphore,
}

impl Previewer {
    pub fn new(config: &Config, denylist: Arc<IpDenylist>) -> Result<Self> {
        let policy = Arc::new(PreviewPolicy::from_config(config));
        let redirect_policy = Arc::clone(&policy);
        let client = crate::net::outbound::client_builder()
            .timeout(FETCH_TIMEOUT)
            .dns_resolver(GuardedResolver::new(Arc::clone(&denylist)))
            .redirect(ssrf::redirect_policy(Arc::clone(&denylist), MAX_REDIRECTS, move |url| {
                redirect_policy.check_denied(url)
            }))
            .build()
            .map_err(|error| {
                Error::internal(format!("cannot build the preview client: {error}"))
            })?;
        Ok(Self {
            client,
            policy,
            denylist,
            max_page: config.url_preview_max_spider_size.as_usize(),
            max_image: config.url_preview_max_media_size.0,
            ttl_ms: config.url_preview_cache_ttl.saturating_mul(1000),
            permits: Semaphore::new(CONCURRENT_FETCHES),
        })
    }

    /// The preview of `url`, from the cache or fetched now.
    pub async fn preview(&self, media: &Media, url: &str) -> Result<Map<String, Value>> {
        if !self.policy.enabled() {
            return Err(Error::unrecognized(
                StatusCode::NOT_FOUND,
                "URL previews are not enabled on this server.",
            ));
        }
        let url = Url::parse(url)
            .map_err(|error| Error::invalid_param(format!("`url` is not a URL: {error}")))?;
        self.policy.check_allowed(&url).map_err(forbidden)?;
        ssrf::check_url(&url, &self.denylist).map_err(forbidden)?;

        let now = media.time.now_ms();
        if let Some(Json(cached)) = PREVIEWS_TABLE.get(media.storage.engine(), &url.to_string())?
            && now < cached.fetched_ms.saturating_add(self.ttl_ms)
        {
            return Ok(cached.data);
        }
        let Ok(_permit) = self.permits.try_acquire() else {
            return Err(Error::limit_exceeded(Duration::from_secs(1)));
        };
        let data = self.fetch(media, &url).await?;
        metrics::counter!("tuwunel_media_previews_fetched_total").increment(1);
        let mut batch = Batch::new();
        PREVIEWS_TABLE.put(
            &mut batch,
            &url.to_string(),
            &Json(PreviewRecord { fetched_ms: now, data: data.clone() }),
        );
        media.storage.writer().commit(batch).await?;
        Ok(data)
    }

    async fn fetch(&self, media: &Media, url: &Url) -> Result<Map<String, Value>> {
        let response = self.client.get(url.clone()).send().await.map_err(fetch_failed)?;
        if !response.status().is_success() {
            return Err(Error::matrix(
                StatusCode::BAD_GATEWAY,
                ErrorKind::Unknown,
                format!("The page answered {}.", response.status()),
            ));
        }
        let mut data = Map::new();
        let content_type = essence(&response);
        if content_type.starts_with("image/") {
            // A link straight to an image: the image is the preview.
            if let Some(image) = self.keep_image(media, response).await {
                image.describe(&mut data);
            }
            return Ok(data);
        }
        if !matches!(content_type.as_str(), "text/html" | "application/xhtml+xml") {
            return Ok(data);
        }
        let page_url = response.url().clone();
        let page = read_prefix(response, self.max_page).await?;
        let page = html::scan(&String::from_utf8_lossy(&page));

        let mut put = |key: &str, value: Option<&str>| {
            if let Some(value) = value {
                data.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        };
        put("og:title", page.get("og:title").or(page.title.as_deref()));
        put("og:description", page.get("og:description").or_else(|| page.get("description")));
        for key in ["og:site_name", "og:type", "og:url"] {
            put(key, page.get(key));
        }
        if let Some(image_url) = page.get("og:image").and_then(|image| page_url.join(image).ok())
            && let Some(image) = self.fetch_image(media, &image_url).await
        {
            image.describe(&mut data);
        }
        Ok(data)
    }

    /// Downloads an image into the media repository; `None` (and a debug log) when it is
    /// refused, missing, too large or not an image: a preview without its picture is still
    /// a preview.
    async fn fetch_image(&self, media: &Media, url: &Url) -> Option<KeptImage> {
        if let Err(refused) =
            ssrf::check_url(url, &self.denylist).and_then(|()| self.policy.check_denied(url))
        {
            tracing::debug!(%url, %refused, "preview image refused");
            return None;
        }
        let response = match self.client.get(url.clone()).send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                tracing::debug!(%url, status = %response.status(), "preview image unavailable");
                return None;
            }
            Err(error) => {
                tracing::debug!(%url, %error, "preview image fetch failed");
                return None;
            }
        };
        self.keep_image(media, response).await
    }

    async fn keep_image(
        &self,
        media: &Media,
        mut response: reqwest::Response,
    ) -> Option<KeptImage> {
        if response.content_length().is_some_and(|length| length > self.max_image) {
            return None;
        }
        let declared_type = essence(&response);
        let result: Result<Option<KeptImage>> = async {
            let mut staging = media.store.stage(self.max_image).await?;
            while let Some(chunk) = response.chunk().await.map_err(fetch_failed)? {
                staging.write(&chunk).await?;
            }
            let staged = staging.finish().await?;
            let Some(path) = staged.path().map(ToOwned::to_owned) else {
                return Ok(None);
            };
            let Ok(probe) = super::store::blocking(move || probe_image(&path)).await else {
                return Ok(None);
            };
            let size = staged.size;
            let content_type = if declared_type.starts_with("image/") {
                declared_type
            } else {
                probe.2.to_owned()
            };
            let uri = media
                .create_as_server(
                    staged,
                    super::owner::Described {
                        content_type: Some(content_type.clone()),
                        filename: None,
                    },
                )
                .await?;
            Ok(Some(KeptImage {
                uri: uri.to_string(),
                content_type,
                width: probe.0,
                height: probe.1,
                size,
            }))
        }
        .await;
        match result {
            Ok(image) => image,
            Err(error) => {
                tracing::debug!(%error, "preview image not kept");
                None
            }
        }
    }
}

/// An image stored for a preview.
struct KeptImage {
    uri: String,
    content_type: String,
    width: u32,
    height: u32,
    size: u64,
}

impl KeptImage {
    fn describe(self, data: &mut Map<String, Value>) {
        data.insert("og:image".to_owned(), Value::String(self.uri));
        data.insert("og:image:type".to_owned(), Value::String(self.content_type));
        data.insert("og:image:width".to_owned(), Value::from(self.width));
        data.insert("og:image:height".to_owned(), Value::from(self.height));
        data.insert("matrix:image:size".to_owned(), Value::from(self.size));
    }
}

/// Dimensions and type of an image file, from its header only.
fn probe_image(path: &std::path::Path) -> Result<(u32, u32, &'static str)> {
    let reader = image::ImageReader::open(path)?.with_guessed_format()?;
    let format = reader.format().ok_or_else(|| Error::invalid_param("not an image"))?;
    let (width, height) =
        reader.into_dimensions().map_err(|error| Error::invalid_param(error.to_string()))?;
    Ok((width, height, format.to_mime_type()))
}

/// The media type of a response without parameters, lower-cased.
fn essence(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Reads at most `limit` bytes of a body; the rest is never downloaded.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < limit {
        let Some(chunk) = response.chunk().await.map_err(fetch_failed)? else {
            break;
        };
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(body)
}

fn forbidden(refused: Refused) -> Error {
    Error::forbidden(format!("This URL cannot be previewed: {refused}."))
}

/// A failed fetch: refused by the address checks (`403`), or the remote end failed (`502`).
fn fetch_failed(error: reqwest::Error) -> Error {
    if let Some(refused) = ssrf::refusal(&error) {
        return forbidden(refused.clone());
    }
    Error::matrix(
        StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        format!("Could not fetch the URL: {}", error.without_url()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(configure: impl FnOnce(&mut PreviewPolicy)) -> PreviewPolicy {
        let mut policy = PreviewPolicy::default();
        configure(&mut policy);
        policy
    }

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let policy = PreviewPolicy::default();
        assert!(!policy.enabled());
        assert!(policy.check_allowed(&url("https://example.org/")).is_err());
    }

    #[test]
    fn allowlists_match_as_documented() {
        let explicit = policy(|p| p.domain_explicit = vec!["example.org".to_owned()]);
        assert!(explicit.check_allowed(&url("https://example.org/a")).is_ok());
        assert!(explicit.check_allowed(&url("https://EXAMPLE.org./a")).is_ok());
        assert!(explicit.check_allowed(&url("https://www.example.org/")).is_err());
        assert!(explicit.check_allowed(&url("https://badexample.org/")).is_err());

        let contains = policy(|p| p.domain_contains = vec!["example".to_owned()]);
        assert!(contains.check_allowed(&url("https://badexample.org/")).is_ok());

        let root = policy(|p| {
            p.domain_explicit = vec!["wikipedia.org".to_owned()];
            p.check_root_domain = true;
        });
        assert!(root.check_allowed(&url("https://en.m.wikipedia.org/wiki/X")).is_ok());
        assert!(root.check_allowed(&url("https://wikipedia.com/")).is_err());

        let by_url = policy(|p| p.url_contains = vec!["https://example.org/wiki/".to_owned()]);
        assert!(by_url.check_allowed(&url("https://example.org/wiki/Page")).is_ok());
        assert!(by_url.check_allowed(&url("https://example.org/other")).is_err());

        let everything = policy(|p| {
            p.domain_contains = vec!["*".to_owned()];
            p.domain_denied = vec!["evil.example".to_owned()];
        });
        assert!(everything.check_allowed(&url("https://anything.example/")).is_ok());
        assert!(everything.check_allowed(&url("https://evil.example/")).is_err());
        assert!(everything.check_denied(&url("http://evil.example/x")).is_err());
    }

    #[test]
    fn root_domains() {
        assert_eq!(root_domain("en.m.wikipedia.org"), "wikipedia.org");
        assert_eq!(root_domain("wikipedia.org"), "wikipedia.org");
        assert_eq!(root_domain("localhost"), "localhost");
    }
}
