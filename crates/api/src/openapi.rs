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
    Doc::openapi()
}
