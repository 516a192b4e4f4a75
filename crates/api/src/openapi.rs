//! The OpenAPI document, read off the routers (each handler's `#[utoipa::path]` is registered
//! where it is served, crate::http) and the proto types.

use crate::http;
use std::sync::OnceLock;
use utoipa::OpenApi;

/// The document's header and the schemas no operation names directly.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "xinge HTTP API",
        description = "Accounts, friends, messages and sync. Errors are `{code, message}` with a stable `code`."
    ),
    components(schemas(
        xinge_core::error::ApiError,
        xinge_core::ErrorCode,
        http::Done,
        http::messages::ReadBody
    ))
)]
struct Doc;

/// The tag every operation has always carried; generated clients name their API classes
/// after it, so it stays although the handlers now live in one module per resource.
const TAG: &str = "http";

/// Every documented endpoint of every role: the business API, the route service and
/// `/healthz`. Built from routers that are never served, so it needs no state.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Doc::openapi();
    doc.merge(http::api_routes().into_openapi());
    doc.merge(http::route::routes().into_openapi());
    doc.merge(http::common::routes().into_openapi());
    finish(&mut doc);
    doc
}

/// What every document of ours gets once its operations are in: the tag, and the error
/// answer as every operation's default response.
pub(crate) fn finish(doc: &mut utoipa::openapi::OpenApi) {
    tag_untagged(doc);
    add_error_default(doc);
}

/// The document served at `/openapi.json`, built once: it only changes with the binary.
pub fn served() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(document)
}

fn operations(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
        ]
        .into_iter()
        .flatten()
    })
}

fn tag_untagged(doc: &mut utoipa::openapi::OpenApi) {
    for op in operations(doc) {
        op.tags.get_or_insert_with(|| vec![TAG.to_owned()]);
    }
}

/// Every operation can fail with statuses its annotation does not list (400 for a bad path
/// or query, 401 without a valid token, 413, 415, 429 under load, ...), and every such
/// answer is an `ApiError`. Saying so once, as each operation's `default` response, keeps
/// the document true for clients and for the contract test (scripts/contract.sh), which
/// found these statuses undocumented, without repeating them on every annotation.
fn add_error_default(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = ResponseBuilder::new()
        .description("An error: `{code, message}` with a stable `code`")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ApiError")))
                .build(),
        )
        .build();
    for op in operations(doc) {
        op.responses
            .responses
            .entry("default".into())
            .or_insert_with(|| error.clone().into());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_operation_documents_its_errors() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(!paths.is_empty());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let default = &op["responses"]["default"]["content"]["application/json"];
                assert_eq!(
                    default["schema"]["$ref"], "#/components/schemas/ApiError",
                    "{method} {path}"
                );
            }
        }
    }
}
