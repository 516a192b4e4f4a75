//! The OpenAPI document, generated from the handler annotations and the proto types.

use crate::http;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "xinge HTTP API",
        description = "Accounts, friends, messages and sync. Errors are `{code, message}` with a stable `code`."
    ),
    paths(
        http::healthz,
        http::route_handler,
        http::register,
        http::login,
        http::logout,
        http::me,
        http::update_me,
        http::find_user,
        http::user,
        http::friends,
        http::remove_friend,
        http::friend_requests,
        http::request_friend,
        http::accept_friend,
        http::decline_friend,
        http::block,
        http::unblock,
        http::send,
        http::recall,
        http::sync,
        http::presence,
        http::conversations,
        http::history,
        http::mark_read,
        http::read_state,
        http::typing,
        http::create_group,
        http::group_info,
        http::update_group,
        http::dismiss_group,
        http::group_members,
        http::add_members,
        http::remove_member,
        http::join_group,
        http::leave_group,
        http::transfer_group,
        http::set_admin,
        http::mute_member,
        http::mute_all,
    ),
    components(schemas(
        xinge_core::error::ApiError,
        xinge_core::ErrorCode,
        http::Done,
        http::ReadBody
    ))
)]
struct Doc;

pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Doc::openapi();
    add_error_default(&mut doc);
    doc
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
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            op.responses
                .responses
                .entry("default".into())
                .or_insert_with(|| error.clone().into());
        }
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
