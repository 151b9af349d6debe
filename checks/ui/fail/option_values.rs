use openlayer_trace::trace;

// Each mistake gets a message of its own, pointing at it.
#[trace(kind = Tool)]
fn kind_as_a_name(q: &str) -> usize {
    q.len()
}

#[trace(skip_output = true)]
fn flag_with_a_value(q: &str) -> usize {
    q.len()
}

#[trace(skip)]
fn skip_without_names(q: &str) -> usize {
    q.len()
}

#[trace(promote(a = "score", b = "score"))]
fn two_values_in_one_column(a: u32, b: u32) -> u32 {
    a + b
}

#[trace(promote(a, b = "a"))]
fn a_rename_onto_another(a: u32, b: u32) -> u32 {
    a + b
}

fn main() {}
