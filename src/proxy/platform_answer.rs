//! The platform answer to a tag request: whether to rewrite (route policy, Accept), for which
//! platform (route, X-Meta-Platform, User-Agent), the selection through the index, the OCI →
//! Docker conversion for clients that need it, and the memos that make a repeated answer cheap.

use super::client::ClientRequest;
use super::layers::LayerWork;
use super::manifests::Manifests;
use super::memo::{Answer, AnswerKey, AnswerMemo, Resolved, SelectionKey, SelectionMemo};
use crate::access_log::RequestNotes;
use crate::conversion::convert_oci_to_docker;
use crate::digest::Digest;
use crate::error::{ErrorCode, ProxyError};
use crate::image_index::{ImageIndex, SelectError, MAX_INDEX_DEPTH};
use crate::manifest::Manifest;
use crate::media_type::{self, AcceptSet};
use crate::platform::{Platform, WindowsMatch};
use crate::route_policy::{
    choose_route, client_platform, should_rewrite, Decision, Route, SelectionStep,
};
use crate::route_policy::{layers_for, OciForLegacy, RequestFacts, RewriteMode, ZstdReads};
use crate::upstream::Upstream;
use crate::upstream_choice::Target;
use bytes::Bytes;
use std::sync::Arc;

pub(crate) struct PlatformAnswers {
    routes: Vec<Route>,
    /// Tag answers by what they depend on (see `memo`).
    answers: AnswerMemo,
    /// Selections by (index, platform, what the client takes).
    selections: SelectionMemo,
}

impl PlatformAnswers {
    pub(crate) fn new(routes: Vec<Route>, answer_budget: u64, selection_budget: u64) -> Self {
        PlatformAnswers {
            routes,
            answers: AnswerMemo::new(answer_budget),
            selections: SelectionMemo::new(selection_budget),
        }
    }

    /// The route this request matches (first match wins).
    fn route(&self, target: &Target, client: &ClientRequest) -> Option<&Route> {
        let facts = RequestFacts {
            host: client.header("host"),
            local_port: client.conn.local.map(|a| a.port()),
            client_ip: client.conn.peer.map(|a| a.ip()),
            repository: target.repository.as_str(),
            user_agent: client.header("user-agent"),
        };
        choose_route(&self.routes, &facts)
    }

    /// What `archway explain` can say before the manifest is known: the upstream, how it was
    /// chosen, the repository and the route — all it has when upstream fails.
    pub(crate) fn decision_before_manifest(
        &self,
        upstream: &Upstream,
        target: &Target,
        client: &ClientRequest,
    ) -> Decision {
        Decision {
            upstream: upstream.config().name.clone(),
            repository: target.repository.to_string(),
            route: self.route(target, client).map(|r| r.index),
            selected_by: format!("{:?}", target.selected_by).to_lowercase(),
            ..Default::default()
        }
    }

    /// The answer to a tag request for this client: the manifest itself, or — for a client that
    /// can't take an index (or on an `always` route) — the child for its platform, converted to
    /// Docker schema2 when it can't take OCI either.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn answer(
        &self,
        manifests: &Manifests,
        work: &LayerWork<'_>,
        upstream: &Arc<Upstream>,
        target: &Target,
        client: &ClientRequest,
        m: Arc<Manifest>,
        notes: &mut RequestNotes,
    ) -> Result<(Arc<Manifest>, bool), ProxyError> {
        let route = self.route(target, client);
        let memo_key = (!client.explain)
            .then(|| AnswerKey::new(&m.digest, route.map(|r| r.index), &client.headers));
        if let Some(hit) = memo_key.as_ref().and_then(|key| self.answers.get(key)) {
            notes.rewrite = hit.rewrite.clone();
            notes.converted = hit.converted;
            return Ok((hit.answer.clone(), hit.vary));
        }
        let mode = route.map(|r| r.config.rewrite).unwrap_or_default();
        let accept = AcceptSet::from_headers(&client.headers);
        let (rewrite, why) = should_rewrite(mode, &accept, &m.media_type);
        let mut decision = Decision {
            manifest_digest: m.digest.to_string(),
            manifest_media_type: m.media_type.clone(),
            rewrite,
            rewrite_reason: why.to_owned(),
            ..self.decision_before_manifest(upstream, target, client)
        };
        let result = self
            .resolve(
                manifests,
                work,
                upstream,
                target,
                client,
                m.clone(),
                route,
                &accept,
                &mut decision,
                notes,
            )
            .await;
        if let Ok((answer, vary)) = &result {
            if let Some(key) = memo_key {
                self.answers.insert(
                    key,
                    Answer {
                        answer: answer.clone(),
                        vary: *vary,
                        rewrite: notes.rewrite.clone(),
                        converted: notes.converted,
                    },
                );
            }
            decision.answer_digest = answer.digest.to_string();
            decision.answer_media_type = answer.media_type.clone();
        }
        if client.explain {
            notes.decision = Some(Box::new(decision));
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn resolve(
        &self,
        manifests: &Manifests,
        work: &LayerWork<'_>,
        upstream: &Arc<Upstream>,
        target: &Target,
        client: &ClientRequest,
        m: Arc<Manifest>,
        route: Option<&Route>,
        accept: &AcceptSet,
        decision: &mut Decision,
        notes: &mut RequestNotes,
    ) -> Result<(Arc<Manifest>, bool), ProxyError> {
        let user_agent = client.header("user-agent");
        let mode = route.map(|r| r.config.rewrite).unwrap_or_default();
        let oci_for_legacy = route.map(|r| r.config.oci_for_legacy).unwrap_or_default();
        let windows = route.map(|r| r.config.windows_match).unwrap_or_default();
        let rewrite = decision.rewrite;
        let single_oci = m.media_type == media_type::OCI_MANIFEST;
        let is_index = media_type::is_index(&m.media_type);
        let layers_mode = route.map(|r| r.config.layers).unwrap_or_default();
        let layers =
            layers_for(layers_mode, client.header("x-meta-layers"), user_agent).map_err(|e| {
                ProxyError::downstream(ErrorCode::Unsupported, e.to_string())
                    .with_status(http::StatusCode::BAD_REQUEST)
            })?;
        decision.layers = Some(format!("{:?}: {}", layers.reads, layers.why));
        let reads = layers.reads;
        // Answers differ by client wherever a zstd layer may be converted for some of them:
        // under any route's `layers`, since `X-Meta-Layers` overrides it (an index's children
        // may have zstd layers its own bytes do not show).
        let vary =
            is_index || (mode != RewriteMode::Never && single_oci) || mentions_zstd(&m.bytes);
        // A client that cannot read zstd gets the child for its platform when the index's
        // child has zstd layers: the index's own digests name the zstd children.
        let for_layers = !rewrite && reads != ZstdReads::Both && is_index;
        let answer = if rewrite || for_layers {
            let (platform, source) =
                client_platform(route, client.header("x-meta-platform"), user_agent)?;
            decision.platform = Some(platform.to_string());
            decision.platform_source = Some(source);
            let key = SelectionKey {
                index: m.digest.clone(),
                platform: platform.to_string(),
                windows,
                accepts_oci: accept.accepts(media_type::OCI_MANIFEST),
                oci_for_legacy,
                reads,
                rewrite,
            };
            let resolved = match self.selections.get(&key) {
                Some(r) => r,
                None => {
                    let mut refused = None;
                    let mut layers_converted = false;
                    let selected = self
                        .select_for_platform(
                            manifests,
                            upstream,
                            target,
                            &m,
                            &platform,
                            windows,
                            decision,
                            &mut refused,
                        )
                        .await;
                    let fitted = match selected {
                        Ok(child) => match work
                            .convert(manifests, upstream, &target.repository, &child, reads)
                            .await
                        {
                            Ok(Some(converted)) => {
                                layers_converted = true;
                                self.fit_for_client(
                                    manifests,
                                    converted,
                                    accept,
                                    oci_for_legacy,
                                    &platform,
                                    &mut refused,
                                )
                                .await
                            }
                            Ok(None) if rewrite => {
                                self.fit_for_client(
                                    manifests,
                                    child,
                                    accept,
                                    oci_for_legacy,
                                    &platform,
                                    &mut refused,
                                )
                                .await
                            }
                            // Only looked at for its layers: none to convert, the index stands.
                            Ok(None) => Ok((m.clone(), false)),
                            Err(e) => Err(e),
                        },
                        // Only looked at for its layers: the index stands, as it would have.
                        Err(_) if !rewrite => {
                            refused = None;
                            Ok((m.clone(), false))
                        }
                        Err(e) => Err(e),
                    };
                    if let Some(reason) = refused {
                        notes.rewrite_outcome = Some((platform.to_string(), reason));
                    }
                    let (answer, converted) = fitted?;
                    let r = Arc::new(Resolved {
                        answer,
                        converted,
                        layers_converted,
                        steps: decision.steps.clone(),
                        offered: decision.offered.clone(),
                    });
                    self.selections.insert(key, r.clone());
                    r
                }
            };
            decision.steps = resolved.steps.clone();
            decision.offered = resolved.offered.clone();
            decision.converted = resolved.converted;
            decision.layers_converted = resolved.layers_converted;
            if rewrite || resolved.layers_converted {
                let reason = match (resolved.converted || resolved.layers_converted, mode) {
                    (true, _) => "converted",
                    (false, RewriteMode::Always) => "always",
                    (false, _) => "legacy",
                };
                notes.rewrite_outcome = Some((platform.to_string(), reason));
                notes.rewrite = Some(format!(
                    "{platform} ({}){}{}",
                    source.as_str(),
                    if resolved.converted {
                        ", converted"
                    } else {
                        ""
                    },
                    if resolved.layers_converted {
                        ", zstd layers converted"
                    } else {
                        ""
                    }
                ));
            }
            notes.converted = resolved.layers_converted;
            resolved.answer.clone()
        } else if single_oci
            && mode != RewriteMode::Never
            && !accept.accepts(media_type::OCI_MANIFEST)
        {
            // A single-platform OCI image for a client that only knows Docker's types.
            let platform = Platform::default_for_clients();
            let mut refused = None;
            let m = match work
                .convert(manifests, upstream, &target.repository, &m, reads)
                .await?
            {
                Some(converted) => {
                    decision.layers_converted = true;
                    notes.converted = true;
                    converted
                }
                None => m,
            };
            let fitted = self
                .fit_for_client(
                    manifests,
                    m,
                    accept,
                    oci_for_legacy,
                    &platform,
                    &mut refused,
                )
                .await;
            // No platform was selected: the image has only one.
            if let Some(reason) = refused {
                notes.rewrite_outcome = Some(("none".into(), reason));
            }
            let (answer, converted) = fitted?;
            decision.converted = converted;
            if converted {
                notes.rewrite = Some("converted".into());
                notes.rewrite_outcome = Some(("none".into(), "converted"));
            }
            answer
        } else if reads != ZstdReads::Both && !is_index {
            match work
                .convert(manifests, upstream, &target.repository, &m, reads)
                .await?
            {
                Some(converted) => {
                    decision.layers_converted = true;
                    notes.converted = true;
                    notes.rewrite = Some("zstd layers converted".into());
                    converted
                }
                None => m,
            }
        } else {
            m
        };
        Ok((answer, vary))
    }

    /// Follows the index (and nested indexes) down to one manifest for `platform`. `refused`
    /// becomes `no-match` when the index has nothing for it.
    #[allow(clippy::too_many_arguments)]
    async fn select_for_platform(
        &self,
        manifests: &Manifests,
        upstream: &Upstream,
        target: &Target,
        index: &Arc<Manifest>,
        platform: &Platform,
        windows: WindowsMatch,
        decision: &mut Decision,
        refused: &mut Option<&'static str>,
    ) -> Result<Arc<Manifest>, ProxyError> {
        let mut current = index.clone();
        for _ in 0..MAX_INDEX_DEPTH {
            let parsed = ImageIndex::parse(&current.bytes)?;
            if decision.offered.is_empty() {
                decision.offered = parsed.offered().iter().map(|p| p.to_string()).collect();
            }
            let selection = parsed.select(platform, windows).map_err(|e| {
                if matches!(e, SelectError::NoMatch { .. }) {
                    *refused = Some("no-match");
                }
                ProxyError::from(e)
            })?;
            decision.steps.push(SelectionStep {
                index_digest: current.digest.to_string(),
                chosen_digest: selection.child.digest.to_string(),
                chosen_media_type: selection.child.media_type.clone(),
                chosen_platform: selection.child.platform.as_ref().map(|p| p.to_string()),
                reason: selection.reason.clone(),
            });
            let (child, _) = manifests
                .by_digest(upstream, &target.repository, &selection.child.digest)
                .await?;
            if !media_type::is_index(&child.media_type) {
                return Ok(child);
            }
            current = child;
        }
        Err(ProxyError::bad_gateway(format!(
            "index {} nests deeper than {MAX_INDEX_DEPTH} levels",
            index.digest
        )))
    }

    /// An OCI manifest for a client that doesn't accept OCI: converted to Docker schema2 (and
    /// stored, so the client's GET by the new digest is served) or refused, as the route says.
    /// `refused` becomes `rejected` when it is refused or cannot be converted.
    async fn fit_for_client(
        &self,
        manifests: &Manifests,
        child: Arc<Manifest>,
        accept: &AcceptSet,
        oci_for_legacy: OciForLegacy,
        platform: &Platform,
        refused: &mut Option<&'static str>,
    ) -> Result<(Arc<Manifest>, bool), ProxyError> {
        if child.media_type != media_type::OCI_MANIFEST || accept.accepts(media_type::OCI_MANIFEST)
        {
            return Ok((child, false));
        }
        if oci_for_legacy == OciForLegacy::Reject {
            *refused = Some("rejected");
            return Err(ProxyError::downstream(
                ErrorCode::ManifestUnknown,
                format!(
                    "the image for {platform} is an OCI manifest ({}), which this client does not accept (oci_for_legacy = \"reject\")",
                    child.digest
                ),
            ));
        }
        let bytes = convert_oci_to_docker(&child.bytes).map_err(|e| {
            *refused = Some("rejected");
            ProxyError::downstream(
                ErrorCode::ManifestUnknown,
                format!(
                    "the image for {platform} is an OCI manifest ({}) that cannot be converted for a client without OCI support: {e}",
                    child.digest
                ),
            )
        })?;
        let converted = Arc::new(Manifest {
            digest: Digest::sha256_of(&bytes),
            media_type: media_type::DOCKER_MANIFEST.to_owned(),
            bytes: Bytes::from(bytes),
        });
        manifests
            .keep(converted.clone())
            .await
            .map_err(|e| ProxyError::internal(format!("cannot store a converted manifest: {e}")))?;
        Ok((converted, true))
    }
}

/// Whether a manifest names a zstd layer type at all (cheap: no parse).
fn mentions_zstd(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"zstd")
}
