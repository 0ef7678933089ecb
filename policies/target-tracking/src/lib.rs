//! Placeholder.
use scalewise_sdk::prelude::*;
struct Tt;
impl Policy for Tt {
    fn describe() -> Info {
        Info::new("target-tracking", "0.1.0", "x")
    }
    fn evaluate(ctx: Context) -> Result<Decision, String> {
        scalewise_sdk::log::info("hi");
        Ok(Decision::scale_to(ctx.target.current, "same"))
    }
}
scalewise_sdk::export_policy!(Tt);
