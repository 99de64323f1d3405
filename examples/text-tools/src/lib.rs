//! A plugin of several functions, called by name (`Sandbox::call`,
//! `shmrt run --call NAME`):
//!
//! - `count_vowels(text) -> {"vowels": n, "chars": n, "total_vowels": n}`
//!   (JSON); `total_vowels` is kept across calls (the plugin's state);
//! - `greet(name) -> "<greeting>, <name>!"`, the greeting from the
//!   configuration key `greeting` (default "Hello");
//! - `lookup(key) -> value`, through the host function `kv_get`;
//! - `checked_div({"num": a, "den": b}) -> a / b`, a plugin error (code 22)
//!   when `den` is 0.

use serde::{Deserialize, Serialize};
use shmrt_guest::{Error, Json};

#[derive(Default)]
struct TextTools {
    total_vowels: u64,
}

#[derive(Serialize)]
struct Report {
    vowels: u64,
    chars: u64,
    total_vowels: u64,
}

#[derive(Deserialize)]
struct Division {
    num: i64,
    den: i64,
}

/// The code of `checked_div`'s error.
const DIVIDE_BY_ZERO: i32 = 22;

impl TextTools {
    fn count_vowels(&mut self, text: &str) -> Result<Json<Report>, Error> {
        let vowels = text.chars().filter(|c| "aeiouAEIOU".contains(*c)).count() as u64;
        self.total_vowels += vowels;
        Ok(Json(Report {
            vowels,
            chars: text.chars().count() as u64,
            total_vowels: self.total_vowels,
        }))
    }

    fn greet(&mut self, name: &str) -> Result<String, Error> {
        let greeting = shmrt_guest::config::get_string("greeting")
            .map_err(|e| Error::msg(1, e))?
            .unwrap_or_else(|| "Hello".to_string());
        Ok(format!("{greeting}, {name}!"))
    }

    fn lookup(&mut self, key: &[u8]) -> Result<Vec<u8>, Error> {
        shmrt_guest::host_fn::call_vec("kv_get", key).map_err(|e| Error::msg(2, e))
    }

    fn checked_div(&mut self, Json(d): Json<Division>) -> Result<Json<i64>, Error> {
        match d.num.checked_div(d.den) {
            Some(q) => Ok(Json(q)),
            None => Err(Error::new(DIVIDE_BY_ZERO, "division by zero")),
        }
    }
}

shmrt_guest::plugin!(TextTools {
    count_vowels,
    greet,
    lookup,
    checked_div
});
