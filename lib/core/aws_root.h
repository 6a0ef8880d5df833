#ifndef CLOISTER_LIB_AWS_ROOT_H
#define CLOISTER_LIB_AWS_ROOT_H
extern const char cl_aws_nitro_root_pem[];
#endif
