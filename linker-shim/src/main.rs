fn main() {
    ipbp_ld::main_with_args(std::env::args_os().skip(1).collect())
}
