//! tags/list, and referrers lists archway does not keep (pages, statuses but 200): passed
//! through uncached, with only the query parameters the API defines, and pagination links
//! pointed back through archway. Kept referrers lists: `referrers`.

use crate::api;
use crate::body::ResponseBody;
use crate::error::ProxyError;
use crate::reference::RepositoryName;
use crate::upstream::{Listing, Upstream};
use http::header::{self, HeaderName, HeaderValue};
use http::Response;

/// What the client asked under, so links lead back the same way.
pub(crate) struct ClientView<'a> {
    /// The repository name as the client wrote it (with any registry path prefix).
    pub(crate) name: &'a str,
    /// The `ns=` that selected the upstream.
    pub(crate) ns: Option<&'a str>,
    pub(crate) query: Option<&'a str>,
}

pub(crate) async fn tags(
    upstream: &Upstream,
    repo: &RepositoryName,
    view: ClientView<'_>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let query = api::passthrough_query(view.query, &["n", "last"]);
    let listing = upstream.tags(repo, &query).await?;
    Ok(respond(listing, repo, &view))
}

pub(super) fn respond(
    listing: Listing,
    repo: &RepositoryName,
    view: &ClientView<'_>,
) -> Response<ResponseBody> {
    let mut out = Response::new(listing.body);
    *out.status_mut() = listing.status;
    let h = out.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, listing.content_type),
        (header::CONTENT_LENGTH, listing.content_length),
        (
            HeaderName::from_static("oci-filters-applied"),
            listing.filters_applied,
        ),
    ] {
        if let Some(v) = value {
            h.insert(name, v);
        }
    }
    if let Some(link) = listing.link {
        let rewritten = rewrite_link(&link, repo.as_str(), view.name, view.ns);
        if let Ok(v) = HeaderValue::from_str(&rewritten) {
            h.insert(header::LINK, v);
        }
    }
    out
}

/// Points a pagination `Link` back through archway: under the name the client used, and with the
/// `ns=` that selected the upstream, so following it reaches the same upstream.
fn rewrite_link(link: &str, upstream_repo: &str, client_name: &str, ns: Option<&str>) -> String {
    let mut out = link.replace(
        &format!("/v2/{upstream_repo}/"),
        &format!("/v2/{client_name}/"),
    );
    if let (Some(ns), Some(end)) = (ns, out.find('>')) {
        let sep = if out[..end].contains('?') { '&' } else { '?' };
        out.insert_str(end, &format!("{sep}ns={ns}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_links() {
        let link = r#"</v2/library/alpine/tags/list?n=2&last=b>; rel="next""#;
        assert_eq!(
            rewrite_link(link, "library/alpine", "docker.io/alpine", None),
            r#"</v2/docker.io/alpine/tags/list?n=2&last=b>; rel="next""#
        );
        assert_eq!(
            rewrite_link(link, "library/alpine", "library/alpine", Some("docker.io")),
            r#"</v2/library/alpine/tags/list?n=2&last=b&ns=docker.io>; rel="next""#
        );
        assert_eq!(
            rewrite_link("</v2/x/tags/list>; rel=\"next\"", "x", "x", Some("ghcr.io")),
            "</v2/x/tags/list?ns=ghcr.io>; rel=\"next\""
        );
    }
}
