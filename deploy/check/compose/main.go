// Command composecheck loads a compose file the way Docker Compose does (compose-go: the
// compose-spec schema, interpolation, references between services, volumes and networks)
// and prints what it found. It exits non-zero on the first problem.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck COMPOSE_FILE")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(
		[]string{os.Args[1]},
		cli.WithOsEnv,
		cli.WithName("telegate"),
		cli.WithResolvedPaths(true),
		// Every profile, so that services behind one are checked too.
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		fail(err)
	}
	project, err := cli.ProjectFromOptions(context.Background(), opts)
	if err != nil {
		fail(err)
	}
	names := project.ServiceNames()
	sort.Strings(names)
	fmt.Printf("%s: services %v, volumes %d\n", os.Args[1], names, len(project.Volumes))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
	os.Exit(1)
}
