//! Every JSON body a client can send (HTTP request bodies and the business commands on the
//! long connection carry the same types), and the TOML config, from arbitrary bytes. The
//! first byte picks the type so one corpus covers all of them. Parsing may fail, never panic;
//! what parses must serialise and parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xinge_proto::api::*;

fn check<T: serde::de::DeserializeOwned + serde::Serialize>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let json = serde_json::to_vec(&v).expect("a parsed body serialises");
        serde_json::from_slice::<T>(&json).expect("a serialised body parses again");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 24 {
        0 => check::<RegisterRequest>(body),
        1 => check::<LoginRequest>(body),
        2 => check::<ProfileUpdate>(body),
        3 => check::<FriendRequestBody>(body),
        4 => check::<SendRequest>(body),
        5 => check::<RecallRequest>(body),
        6 => check::<SyncRequest>(body),
        7 => check::<HistoryRequest>(body),
        8 => check::<ReadRequest>(body),
        9 => check::<ReadStateRequest>(body),
        10 => check::<TypingRequest>(body),
        11 => check::<PresenceRequest>(body),
        12 => check::<AuthRequest>(body),
        13 => check::<Signal>(body),
        14 => check::<CreateGroupRequest>(body),
        15 => check::<UsersRequest>(body),
        16 => check::<UpdateGroupRequest>(body),
        17 => check::<MemberFlagRequest>(body),
        18 => check::<FlagRequest>(body),
        19 => check::<TransferRequest>(body),
        20 => check::<Message>(body),
        21 => check::<Event>(body),
        22 => check::<MessageBody>(body),
        _ => {
            // The config file is trusted more than a client, but a typo must give an error,
            // not a panic, and validate() must accept or refuse whatever parsed.
            if let Ok(text) = std::str::from_utf8(body)
                && let Ok(c) = toml::from_str::<xinge_core::config::Config>(text)
            {
                let _ = c.validate();
            }
        }
    }
});
