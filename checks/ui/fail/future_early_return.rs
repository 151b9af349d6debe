use std::future::Future;
use std::pin::Pin;

use openlayer_trace::trace;

struct Cache;

impl Cache {
    // A future returned before the block the body ends with would run untraced.
    #[trace]
    fn get(&self, key: String) -> Pin<Box<dyn Future<Output = Option<String>> + Send + '_>> {
        if key.is_empty() {
            return Box::pin(async move { None });
        }
        // Closures and nested items have `return`s of their own.
        let _len = |k: &str| -> usize { return k.len() };
        Box::pin(async move { Some(key) })
    }
}

fn main() {
    let _ = Cache.get(String::new());
}
