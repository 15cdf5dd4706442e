// The probe image of tests/cluster/test_node.py (standard library only): built by
// scripts/k8s_images.py go_program_image() into a static one-file OCI image.
module mailsluice.invalid/apiprobe

go 1.24
